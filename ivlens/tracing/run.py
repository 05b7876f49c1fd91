"""Run-level tracing analyses: the circuit-selector comparison over samples and models, written to a run
directory (``compare.parquet``, ``compare.json``, ``sample_paths.parquet``: the top paths of the first sample under
A and B, figures). The CLI and the main job both call this."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import pandas as pd

from ivlens.models.load import LoadedModel
from ivlens.runs import RunDir, atomic_write_json
from ivlens.tasks import Task, load_task
from ivlens.tasks.selection import select_samples

from .compare import compare_subtasks
from .figures import plot_head_activity, plot_overlap_curves


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def compare_run(models: Sequence[LoadedModel], task: str | Task, run: RunDir, *, samples: int | None = 50,
                split: str = "all", seed: int = 0, fmt: str = "raw", top_k: int = 20, beam: int = 256,
                progress: Callable | None = None) -> dict[str, dict]:
    """Trace every selected sample under instruction A and B (and two rephrasings, the baseline) for each
    model; returns ``{model: summary}`` (weighted Jaccard A vs B and baseline, per-layer curves, the layer
    where the computations part, completeness error) and writes the tables and figures to ``run``."""
    from contextlib import nullcontext

    from ivlens.api import split_queries

    t = task if isinstance(task, Task) else load_task(task)
    curves, summaries, rows, examples = {}, {}, [], []
    for lm in models:
        chosen = select_samples(t, samples, seed, split_queries(lm, t, split))
        ctx = progress(f"trace --compare {lm.name}", len(chosen)) if progress else nullcontext(None)
        with ctx as advance:
            res = compare_subtasks(lm.model, lm.tokenizer, t, chosen, fmt=fmt, top_k=top_k, beam=beam,
                                   progress=advance)
        s = res.summary()
        summaries[lm.name] = s
        curves[f"{lm.name}: A vs B"] = s["per_layer_ab"]
        if s["per_layer_baseline"]:
            curves[f"{lm.name}: rephrasings"] = s["per_layer_baseline"]
        rows += [dict(r, model=lm.name) for r in res.rows]
        examples += [dict(r, model=lm.name) for r in res.example]
        plot_head_activity({k: v.numpy() for k, v in res.head_activity.items()},
                           run.figure_path(f"head_activity-{slug(lm.name)}.png"),
                           title=f"{lm.name}: head activity of paths leaving T_inst")
    plot_overlap_curves(curves, run.figure_path("overlap_by_layer.png"))
    df = pd.DataFrame(rows)
    for c in [c for c in df.columns if c.endswith("per_layer")]:
        df[c] = df[c].map(json.dumps)
    run.write_table("compare", df)
    if examples:
        run.write_table("sample_paths", pd.DataFrame(examples))
    atomic_write_json(run.path / "compare.json", summaries, indent=1)
    return summaries
