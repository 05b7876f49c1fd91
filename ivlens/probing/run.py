"""``probe_run``: collect IVs for every model, then probe, project and compare them layer by layer.

Run directory (``ivlens.runs.RunDir``)::

    manifest.json
    instructions.parquet       the instruction set (one row per instruction; label = subtask)
    ivs/<model>/...            the IVs (see ivlens.probing.collect)
    probe_accuracy.parquet     model, probe, target, layer, cv_mean, cv_std, shuffled_mean, shuffled_std,
                               majority, heldout_acc, heldout_std, heldout_majority, n, n_classes, heldout_n,
                               selectivity
    projections.parquet        model, layer, method (lda|pca), row, class, split, variant, x, y
    similarity.parquet         model, layer, centered, class_a, class_b, cos
    probe_weights/<model>.*    every probe refitted on all its rows, and the LDA axis (ivlens.probing.weights),
                               for ``ivlens trace --readout probe:RUN_DIR:layer:class``
    figures/*.png + *.parquet  accuracy by layer, LDA/PCA scatters, similarity heatmaps

Probes (column ``probe``): ``all`` (every class together) and, when several tasks are probed, one per task
with two or more subtasks (``task:adjectives``: comparative vs antonym). ``target`` is ``subtask`` (the class)
or, with ``--varying labels``, also ``label_space`` (which label-space variant, within one subtask).
The held-out evaluation trains on the training phrasings and tests on the held-out ones (``instructions``),
or leaves one label-space slot out at a time (``labels``); see :mod:`ivlens.probing.instructions`.
``heldout_std`` is the bootstrap standard deviation of ``heldout_acc`` over the held-out rows (the fitted probes
kept, the test rows resampled; in closed form, :func:`ivlens.probing.probes.heldout_bootstrap_std`), not a spread
over refits; it is 0 where every one of the ``heldout_n`` held-out rows is right (the error rate is then bounded
by about ``3 / heldout_n`` at 95 %, not 0). ``cv_std`` and ``shuffled_std`` are spreads over folds.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ivlens.models.load import LoadedModel, load_model
from ivlens.runs import RunDir, slug
from ivlens.sharding import owner
from ivlens.specs import SpecError, Varying
from ivlens.tasks.prompts import PromptFormat
from ivlens.tasks.requirements import require_rephrasings
from ivlens.tasks.schema import Task
from ivlens.units import UnitLoop

from . import figures
from .collect import IVStore, collect_ivs, parse_layers
from .instructions import instruction_set, organism_heldout
from .probes import ProbeConfig, class_cosine, layer_fits, layers_per_batch, lda_project, pca_2d, probe_layers
from .weights import ProbeWeights

log = logging.getLogger(__name__)


@dataclass
class ProbeResult:
    """What :func:`probe_run` produced: the run directory and its three tables."""

    run: RunDir
    accuracy: pd.DataFrame
    projections: pd.DataFrame
    similarity: pd.DataFrame


def probe_specs(labels: pd.DataFrame, varying: Varying
                ) -> list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray | None, list[str]]]:
    """``(probe, target, row mask, y, heldout groups, class names)`` for every probe of one model."""
    specs = []
    groups_all = ((labels.split == "heldout").astype(int).to_numpy() if varying == "instructions"
                  else labels.variant_slot.to_numpy() + 1)
    subtasks = sorted(labels.subtask.unique())

    def add(probe, target, mask, classes, column):
        y = pd.Categorical(labels.loc[mask, column], categories=classes).codes.astype(np.int64)
        specs.append((probe, target, mask, y, groups_all[mask] if target == "subtask" else None, list(classes)))

    everything = np.ones(len(labels), dtype=bool)
    if len(subtasks) >= 2:
        add("all", "subtask", everything, subtasks, "subtask")
    tasks = list(dict.fromkeys(labels.task))
    if len(tasks) >= 2:
        for task in tasks:
            mask = (labels.task == task).to_numpy()
            subs = sorted(labels.subtask[mask].unique())
            if len(subs) >= 2:
                add(f"task:{task}", "subtask", mask, subs, "subtask")
    if varying == "labels":
        for sub in subtasks:
            mask = (labels.subtask == sub).to_numpy()
            slots = sorted(labels.variant[mask].unique())
            if len(slots) >= 2:
                add(f"labels:{sub}", "label_space", mask, slots, "variant")
    if not specs:
        raise ValueError("nothing to probe: the instruction set has a single class; give two or more "
                         "subtasks (tasks) or a second --instructions CSV")
    return specs


def analyse_store(store: IVStore, model: str, varying: Varying, cfg: ProbeConfig = ProbeConfig(),
                  weights: ProbeWeights | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Probe, project and compare one model's stored IVs, a batch of layers in memory at a time: each probe's fits
    of all the batch's layers are one solve (:func:`ivlens.probing.probes.probe_layers`; as many layers as
    :func:`ivlens.probing.probes.layers_per_batch` allows: all 6 of an organism, 10 of SmolLM2's 30).

    ``weights``: gathers each probe refitted on all its rows and the LDA axis, layer by layer, for tracing
    (:mod:`ivlens.probing.weights`).

    Returns:
        ``(accuracy, projections, similarity)`` tables (see the module docstring).
    """
    labels = store.labels()
    specs = probe_specs(labels, varying)
    classes = sorted(labels.subtask.unique())
    y_all = pd.Categorical(labels.subtask, categories=classes).codes.astype(np.int64)
    refit = weights is not None  # the refit on all rows joins the layers' batch of fits
    d = int(store.meta["d_model"])
    chunk = min(layers_per_batch(int(mask.sum()), d, len(names), len(layer_fits(y, groups, cfg, refit).kind))
                for _, _, mask, y, groups, names in specs)
    acc_rows, proj_frames, sim_rows = [], [], []
    for start in range(0, len(store.layers), chunk):
        layers = store.layers[start:start + chunk]
        Xs = store.load_layers(layers)  # [L, n, d_model]
        fitted = [probe_layers(Xs[:, mask], y, groups, cfg, refit) for _, _, mask, y, groups, _ in specs]
        for pos, layer in enumerate(layers):
            X = Xs[pos]  # [n, d_model]
            for (probe, target, _, _, _, names), per_layer in zip(specs, fitted, strict=True):
                res, probe_refit = per_layer[pos]
                if weights is not None:
                    weights.add_probe(probe, target, names, layer, probe_refit)
                acc_rows.append({"model": model, "probe": probe, "target": target, "layer": layer, **asdict(res),
                                 "selectivity": res.selectivity})
            base = labels[["row", "subtask", "split", "variant"]].rename(columns={"subtask": "class"})
            if len(classes) >= 2:
                Z, _, axis = lda_project(X, y_all, seed=cfg.seed)
                if weights is not None:
                    weights.add_lda(classes, layer, axis)
                proj_frames.append(base.assign(model=model, layer=layer, method="lda", x=Z[:, 0], y=Z[:, 1]))
            P, _ = pca_2d(X, seed=cfg.seed)
            proj_frames.append(base.assign(model=model, layer=layer, method="pca", x=P[:, 0], y=P[:, 1]))
            for centered in (True, False):
                S = class_cosine(X, y_all, len(classes), center=centered)  # [C, C]
                sim_rows += [{"model": model, "layer": layer, "centered": centered, "class_a": a, "class_b": b,
                              "cos": float(S[i, j])} for i, a in enumerate(classes) for j, b in enumerate(classes)]
            log.info("%s layer %d: %s", model, layer,
                     ", ".join(f"{r['probe']} {r['cv_mean']:.2f}" for r in acc_rows[-len(specs):]))
    proj = pd.concat(proj_frames, ignore_index=True)[["model", "layer", "method", "row", "class", "split",
                                                      "variant", "x", "y"]]
    return pd.DataFrame(acc_rows), proj, pd.DataFrame(sim_rows)


def figure_layers(layers: list[int], n: int = 3) -> list[int]:
    """``n`` layers spread over ``layers`` (first, middle, last)."""
    if len(layers) <= n:
        return list(layers)
    idx = np.linspace(0, len(layers) - 1, n).round().astype(int)
    return [layers[i] for i in dict.fromkeys(idx)]


def probe_run(models: Sequence[str | LoadedModel], tasks: Sequence[str | Task], *,
              layers: str | list[int] | None = "all", varying: Varying = "instructions",
              run: RunDir | None = None, out: str | Path | None = None,
              user_instructions: dict[str, str | Path] | None = None, fmt: PromptFormat = "raw",
              batch_size: int | None = None, cfg: ProbeConfig = ProbeConfig(), figure_at: list[int] | None = None,
              max_per_subtask: int | None = None, load_kwargs: dict | None = None,
              memory_budget: str | int | None = None, resume: bool = False,
              shard: str | None = None, figures: bool = True) -> ProbeResult | None:
    """Collect IVs of ``tasks`` ' instructions in every model and analyse their geometry layer by layer.

    Models given by name are loaded one at a time and released after collection, so three 7B models do
    not share memory. IVs are streamed to ``run``'s ``ivs/`` and read back one layer at a time.

    Args:
        models: names (``organism-base``, hub ids, paths) or loaded models; several → side by side.
        tasks: built-in task names, YAML spec paths or :class:`Task` s (may be empty with user CSVs).
        layers: ``"all"``, ``"0,3,-1"`` or a list of decoder layers.
        varying: ``instructions`` or ``labels`` (:mod:`ivlens.probing.instructions`).
        run: an open run directory; else one is created (at ``out`` if given).
        user_instructions: extra classes ``{name: CSV index,instruction}``.
        figure_at: layers of the LDA/PCA scatters and heatmaps (default: first, middle, last probed).
        max_per_subtask: use only the first N rephrasings of each file (quick runs).
        batch_size: prompts per forward of IV collection (``None``: as many as fit ``memory_budget``,
            ``--memory-budget``; default a safe share of free memory, :mod:`ivlens.budget`).
        resume: keep the IV unit files already in ``run`` (a killed run resumed; see :func:`collect_ivs`).
        shard: ``"i/n"``: collect only that share of the batches (numbered model by model,
            :mod:`ivlens.sharding`) and stop before the probes (returns ``None``); ``ivlens merge`` finishes.
        figures: write the run's figures (``figures/``); the tables do not depend on it.

    Returns:
        :class:`ProbeResult`.

    >>> res = probe_run(["organism-base", "organism-sft", "organism-dpo"], ["adjectives", "animals"])
    >>> res.accuracy.query("probe == 'all'").pivot(index="layer", columns="model", values="cv_mean")
    """
    names = [m if isinstance(m, str) else m.name for m in models]
    if len(set(names)) != len(names):
        raise SpecError(f"--model: names must be distinct to compare them side by side: {names}")
    if varying == "instructions":
        require_rephrasings(tasks, n=2, analysis="probing")  # before any model is loaded
    task_names = [t if isinstance(t, str) else t.name for t in tasks]
    if run is None:
        for m in models:  # refuse bad layers before a run directory exists
            if isinstance(m, LoadedModel):
                parse_layers(layers, m.n_layers)
        run = RunDir.create("probe", "+".join(slug(n) for n in names)[:60], out=out,
                            args={"tasks": task_names, "layers": layers, "varying": varying, "fmt": fmt,
                                  "batch_size": batch_size, "probe": asdict(cfg),
                                  "user_instructions": user_instructions, "max_per_subtask": max_per_subtask},
                            task=",".join(task_names), seed=cfg.seed)
    accs, projs, sims, described, probed_layers = [], [], [], [], []
    batches = UnitLoop(None, owns=owner(shard))  # numbers every model's IV batches, one after the other
    for m in models:
        loaded = m if isinstance(m, LoadedModel) else load_model(m, **(load_kwargs or {}))
        held = organism_heldout(loaded.path)
        rows = instruction_set(list(tasks), varying, user_instructions, held, max_per_subtask)
        model_layers = parse_layers(layers, loaded.n_layers)
        store = collect_ivs(loaded, rows, run.path / "ivs" / slug(loaded.name), layers=model_layers,
                            batch_size=batch_size, fmt=fmt, memory_budget=memory_budget, resume=resume,
                            units=batches)
        if shard is not None:
            continue
        described.append(loaded.describe() | {"heldout_from_card": held is not None})
        if held is not None:
            log.info("%s: held-out phrasings from the organism card", loaded.name)
        if not isinstance(m, LoadedModel):
            del loaded
            gc.collect()
        name = m if isinstance(m, str) else m.name
        weights = ProbeWeights(name, int(store.meta["d_model"]))
        acc, proj, sim = analyse_store(store, name, varying, cfg, weights)
        weights.write(run.path, store.path.name)  # the IVs' directory name: one slug per model
        accs.append(acc)
        projs.append(proj)
        sims.append(sim)
        probed_layers = model_layers if not probed_layers else [x for x in probed_layers if x in model_layers]
        run.write_table("instructions", store.labels())  # identical across models unless a card differs
    if shard is not None:
        return None
    accuracy = pd.concat(accs, ignore_index=True)
    projections = pd.concat(projs, ignore_index=True)
    similarity = pd.concat(sims, ignore_index=True)
    run.write_table("probe_accuracy", accuracy)
    run.write_table("projections", projections)
    run.write_table("similarity", similarity)
    chosen = figure_at if figure_at is not None else figure_layers(probed_layers)
    if figures:  # a study's probe step draws none: its report draws its own from the tables
        _figures(run, accuracy, projections, similarity, chosen)
    run.manifest["models"] = described
    run.finish(figure_layers=chosen)
    return ProbeResult(run, accuracy, projections, similarity)


def _figures(run: RunDir, accuracy: pd.DataFrame, projections: pd.DataFrame, similarity: pd.DataFrame,
             layers: list[int]) -> None:
    for (probe, target), _ in accuracy.groupby(["probe", "target"], sort=False):
        figures.plot_accuracy_by_layer(accuracy, run.figure_path(f"accuracy_{slug(probe)}.png"), probe, target)
    for method in ("lda", "pca"):
        if (projections.method == method).any():
            figures.plot_projection(projections, run.figure_path(f"{method}_scatter.png"), layers, method)
    for layer in layers:
        figures.plot_similarity(similarity, run.figure_path(f"similarity_layer{layer}.png"), layer, centered=True)
