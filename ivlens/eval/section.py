"""The report's instruction-following section and its figure, drawn from finished ``eval`` runs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ivlens.page import html as h
from ivlens.page.context import Context, runs_section
from ivlens.page.figures import ordered, present
from ivlens.page.reader import Run
from ivlens.plots import colours, plt, png_bytes


# ----------------------------------------------------------------------------- figures
def eval_bars(summary: pd.DataFrame, models: Sequence[str]) -> bytes:
    """Accuracy and IA per task · subtask · condition (rows: metric; columns: task), one bar per model.

    ``summary``: eval ``summary`` rows (model, task, subtask, condition, ia, accuracy) of one split."""
    tasks = ordered(summary.task)
    models = present(models, summary.model)
    col = colours(models)
    fig, axes = plt.subplots(2, len(tasks), figsize=(max(4.8, 0.55 * 6 * len(models)) * len(tasks) / 1.4, 5.6),
                             squeeze=False)
    width = 0.8 / max(1, len(models))
    for j, task in enumerate(tasks):
        d = summary[summary.task == task]
        groups = ordered(zip(d.subtask, d.condition, strict=True))
        x = np.arange(len(groups))
        for i, (metric, label) in enumerate((("accuracy", "accuracy (right answer)"),
                                             ("ia", "IA (answer in the label space)"))):
            ax = axes[i][j]
            for k, m in enumerate(models):
                dm = d[d.model == m].set_index(["subtask", "condition"])
                ys = [dm[metric].get(g, np.nan) for g in groups]
                ax.bar(x + (k - (len(models) - 1) / 2) * width, ys, width, color=col[m], label=m)
            ax.set_ylim(0, 1.05)
            ax.set_ylabel(label)
            ax.set_xticks(x, [f"{s}\n{c.replace('_', ' ')}" for s, c in groups], fontsize=7)
            ax.set_title(task if i == 0 else "", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(title="model", fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)



# ----------------------------------------------------------------------------- section
@runs_section("eval", having="summary", id="eval", title="Instruction following")
def eval_section(ctx: Context, runs: list[Run], s: h.Section) -> h.Section:
    """Instruction following.

    Greedy answers of each model with the subtask's instruction (`instructed`), without it (`query_only`) and
    with the other subtask's instruction (`other_instruction`). Accuracy: the answer is right; IA: the answer
    lies in the subtask's label space (the paper's instruction-following accuracy).
    """
    frames = []
    for r in runs:
        d = r.table("summary")
        d.insert(0, "split", r.args.get("split", "all"))
        frames.append((r, d))
    for split in dict.fromkeys(d.split.iloc[0] for _, d in frames):
        part = [(r, d) for r, d in frames if d.split.iloc[0] == split]
        summary = pd.concat([d for _, d in part], ignore_index=True)
        data = [x for r, _ in part for x in ctx.data(r, "summary")]
        s.add(h.heading(f"{split} queries"),
              h.figure(eval_bars(summary, ctx.models),
                       f"Accuracy (top) and IA (bottom) per subtask and condition, {split} queries; one bar per "
                       "model.", data))
        wide = summary.pivot_table(index=["task", "subtask", "condition"], columns="model",
                                   values=["accuracy", "ia"], sort=False)
        wide.columns = [f"{metric} {model}" for metric, model in wide.columns]
        order = [f"{metric} {m}" for metric in ("accuracy", "ia") for m in ctx.models if f"{metric} {m}" in wide]
        wide = wide[order].reset_index()
        n = summary.groupby("task")["n"].max().to_dict()
        s.add(h.table(wide, f"Accuracy and IA, {split} queries (queries per task: "
                            f"{', '.join(f'{k} {v}' for k, v in n.items())}).", data))
        decides = [(r, r.table("decides")) for r, _ in part if r.has("decides")]
        if decides:
            dec = pd.concat([d for _, d in decides], ignore_index=True)
            wide = dec.pivot_table(index="task", columns="model", values="decides", sort=False)
            wide = wide[[m for m in ctx.models if m in wide] + [m for m in wide if m not in ctx.models]].reset_index()
            s.add(h.table(wide, f"The instruction decides: the share of {split} queries for which each subtask's "
                                "instruction gives that subtask's right answer.",
                          [x for r, _ in decides for x in ctx.data(r, "decides")]))
    return s



eval_section.omitted = ("instruction following", "eval")  # the page's note when no run draws it
