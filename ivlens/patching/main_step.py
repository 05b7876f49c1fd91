"""The main job's patching step: a triplet sweep on base / SFT / DPO side by side, with its headline tables."""

from __future__ import annotations

import pandas as pd

TASK, SUBTASK = "adjectives", "adj_ant"


def headline(an_single: pd.DataFrame, additivity: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per model × position: the strongest single layer; and the additivity fractions per set size."""
    best = an_single.loc[an_single.groupby(["model", "position"], sort=False)["mean"].idxmax()]
    best = best[["model", "position", "layer", "mean", "sem", "ia", "acc_top1"]].rename(
        columns={"layer": "strongest layer", "mean": "mean effect"})
    add = additivity[["model", "position", "set_size", "n_sets", "frac_superadditive", "frac_subadditive",
                      "frac_paper_criterion", "frac_paper_released_test"]] if not additivity.empty else additivity
    return best.reset_index(drop=True), add


def step_patch(ctx) -> str:
    """``ivlens patch --model organism-{base,sft,dpo} --task adjectives --subtask adj_ant --layers triplets
    --positions first,last --samples 100 --target {bare,formatted}`` (``ctx.samples`` if set), then interactions
    and figures. The bare target is the paper's; on a one-word query its first and last positions coincide, so
    the formatted target (``Adjective: big. Answer:``) is the one where the first position is informative."""
    from ivlens.api import run_patch
    from ivlens.main_job import markdown_table
    from ivlens.specs import PatchSpec

    from .cli import progress_columns

    samples = ctx.samples or 100
    parts = ["## Where the IV lives: layer patching\n"]
    for target in ("bare", "formatted"):
        spec = PatchSpec(models=ctx.model_names, task=TASK, subtask=SUBTASK,
                         layers="triplets", positions="first,last", samples=samples, target=target)
        with progress_columns() as bar:
            tid = bar.add_task("patch", total=None)
            res = run_patch(spec, models=ctx.models, out=ctx.root / f"patch-{target}",
                            progress=lambda d, t, tid=tid, bar=bar: bar.update(tid, completed=d, total=t))
        run, an = res.run, res.analysis
        best, add = headline(an.single_layer, an.additivity)
        parts += [
            f"### {target} target ({run.path})\n",
            f"`ivlens patch --model organism-base --model organism-sft --model organism-dpo --task {TASK} "
            f"--subtask {SUBTASK} --layers triplets --positions first,last --target {target} --samples {samples}`\n",
            "Strongest single layer (effect: change of the label's logit against the query-only run)\n",
            markdown_table(best), "",
            "Additivity of pairs and triplets (Holm-corrected paired t-tests; at the last position a set equals its "
            "highest layer by construction, see docs/patching.md)\n",
            markdown_table(add) if not add.empty else "(no multi-layer sets)", "",
            f"Figures: {run.path / 'figures'}\n",
        ]
    return "\n".join(parts)
