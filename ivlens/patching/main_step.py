"""The main job's patching step: a triplet sweep on base / SFT / DPO side by side, with its headline tables."""

from __future__ import annotations

import pandas as pd

from ivlens.runs import RunDir

from .analysis import analyse
from .sweep import patch_sweep

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
    from ivlens.main_job import markdown_table

    from .cli import progress_columns

    samples = ctx.samples or 100
    parts = ["## Where the IV lives: layer patching\n"]
    for target in ("bare", "formatted"):
        args = {"task": TASK, "subtask": SUBTASK, "layers": "triplets", "positions": "first,last",
                "samples": samples, "target": target}
        run = RunDir.create("patch", f"{TASK}-{SUBTASK}-{target}", out=ctx.root / f"patch-{target}", args=args,
                            models=[m.describe() for m in ctx.models], task=TASK, seed=0)
        with progress_columns() as bar:
            tid = bar.add_task("patch", total=None)
            res = patch_sweep(ctx.models, TASK, SUBTASK, layers="triplets", positions="first,last", samples=samples,
                              target=target, run=run, progress=lambda d, t, tid=tid, bar=bar: bar.update(
                                  tid, completed=d, total=t))
        an = analyse(res.rows, run=run)
        run.finish(engine={k: v.to_dict() for k, v in res.stats.items()}, n_rows=len(res.rows))
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
