"""Redraw the README tour's four figures (``docs/img/tour-*.png``) from a finished main-job study directory.

    python scripts/tour_figures.py runs/organism            # after `bash scripts/main.sh`
    python scripts/tour_figures.py STUDY_DIR --out docs/img  # the default --out

Each figure is drawn by the same function, on the same tables, that the study's ``report.html`` uses
(each analysis's section module, ``ivlens.<analysis>.section``), restricted to what the tour shows:

- ``tour-single-layer.png``: :func:`~ivlens.patching.section.single_layer_curves` of the patch run on the
  **formatted** target (the query without instruction in the organisms' answer format), both positions;
- ``tour-pair-heatmaps.png``: :func:`~ivlens.patching.section.set_heatmaps` of the pairs of the patch run on the
  **formatted** target at its **first** position, the mean joint effect (top) above the mean interaction
  (bottom), two calls of the report's function stacked into one image;
- ``tour-probe-accuracy.png``: :func:`~ivlens.probing.section.probe_accuracy` of the probe over every subtask
  (``probe == "all"``; the report draws the per-task probes as further rows);
- ``tour-trace-selectivity.png``: :func:`~ivlens.tracing.section.selectivity` of the ``trace --compare`` run on
  ``--task`` (default adjectives).

Bad input (no such directory, a study without the run a figure needs) ends in one line and exit code 2.

It lives in ``scripts/`` beside ``main.sh`` (which writes the study it reads), not in ``benchmarks/``: it measures
nothing, it maintains the README's images. Run it with the project's environment (``.venv/bin/python``).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ivlens.page.context import n_layers_of
from ivlens.page.reader import Run, Study, read_study
from ivlens.patching.section import set_heatmaps, single_layer_curves
from ivlens.plots import plt
from ivlens.probing import section as probing_section
from ivlens.tracing.section import selectivity

IMG = Path(__file__).resolve().parent.parent / "docs" / "img"


class TourError(Exception):
    """A study that lacks what one of the tour's figures is drawn from."""


def _patch_run(study: Study, target: str) -> Run:
    runs = [r for r in study.of("patch") if r.has("single_layer") and r.args.get("target", "bare") == target]
    if not runs:
        raise TourError(f"{study.root}: no finished patch run on the {target} target (the study's patch step "
                        f"needs `target: [bare, formatted]`)")
    return runs[0]


def single_layer(study: Study) -> bytes:
    run = _patch_run(study, "formatted")
    return single_layer_curves(run.table("single_layer"), study.model_order)


def _stack(pngs: list[bytes]) -> bytes:
    """PNG images one above the other (same width: the same figure function at the same size)."""
    images = [plt.imread(io.BytesIO(p), format="png") for p in pngs]
    width = max(i.shape[1] for i in images)
    padded = [np.pad(i, ((0, 0), (0, width - i.shape[1]), (0, 0)), constant_values=1.0) for i in images]
    buf = io.BytesIO()
    plt.imsave(buf, np.concatenate(padded, axis=0), format="png")
    return buf.getvalue()


def pair_heatmaps(study: Study, position: str = "first") -> bytes:
    run = _patch_run(study, "formatted")
    singles, inter = run.table("single_layer"), run.table("interactions")
    n_layers = n_layers_of(run, singles, inter)
    singles, inter = singles[singles.position == position], inter[inter.position == position]
    if not (inter.set_size == 2).any():
        raise TourError(f"{run.path}: no pairs of layers at the {position} position (needs `layers: pairs` or "
                        "`triplets` and `positions` with first)")
    return _stack([set_heatmaps(inter, singles, study.model_order, 2, value, n_layers)
                   for value in ("mean_joint", "mean_interaction")])


def probe_accuracy(study: Study, probe: str = "all") -> bytes:
    runs = [r for r in study.of("probe") if r.has("probe_accuracy")]
    if not runs:
        raise TourError(f"{study.root}: no finished probe run")
    acc = runs[0].table("probe_accuracy")
    acc = acc[acc.probe == probe]
    if acc.empty:
        raise TourError(f"{runs[0].path}: no probe {probe!r} in probe_accuracy.parquet")
    return probing_section.probe_accuracy(acc, study.model_order)


def trace_selectivity(study: Study, task: str) -> bytes:
    runs = [r for r in study.of("trace") if r.has("selectivity") and r.manifest.get("task") == task]
    if not runs:
        raise TourError(f"{study.root}: no finished `trace --compare` run on task {task} with a selectivity table")
    sel = runs[0].table("selectivity")
    models = [m for m in study.model_order if m in set(sel.model)]
    models += [m for m in pd.unique(sel.model) if m not in models]
    return selectivity(sel, models)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", type=Path, help="a finished main-job study directory (ivlens run examples/organism.yaml)")
    ap.add_argument("--out", type=Path, default=IMG, help=f"where the PNGs go (default {IMG})")
    ap.add_argument("--task", default="adjectives", help="the trace --compare run's task (default adjectives)")
    a = ap.parse_args(argv)
    try:
        study = read_study(a.study)
        drawn = {"tour-single-layer.png": single_layer(study),
                 "tour-pair-heatmaps.png": pair_heatmaps(study),
                 "tour-probe-accuracy.png": probe_accuracy(study),
                 "tour-trace-selectivity.png": trace_selectivity(study, a.task)}
    except (FileNotFoundError, TourError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    for name, png in drawn.items():
        (a.out / name).write_bytes(png)
        print(f"{a.out / name}: {len(png) / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
