"""The report's logit-lens section, drawn from finished runs' tables only (``summary``, ``top_tokens``)."""

from __future__ import annotations

import pandas as pd

from ivlens.page import html as h
from ivlens.page.context import Context, runs_section
from ivlens.page.reader import Run
from ivlens.plots import colours, plt, png_bytes


def mass_figure(summary: pd.DataFrame, models: list[str]) -> bytes:
    """One panel per subtask: own-label minus other-label mass by layer, one line per model with its CI band."""
    subtasks = list(dict.fromkeys(summary.subtask))
    fig, axes = plt.subplots(1, len(subtasks), figsize=(3.2 * len(subtasks), 2.6), sharey=True, squeeze=False,
                             layout="constrained")
    colour = colours(models)
    for ax, sub in zip(axes[0], subtasks, strict=True):
        for model in models:
            d = summary[(summary.subtask == sub) & (summary.model == model)].sort_values("layer")
            if d.empty:
                continue
            ax.plot(d.layer, d["diff"], marker="o", ms=3, color=colour[model], label=model)
            ax.fill_between(d.layer, d.diff_lo, d.diff_hi, color=colour[model], alpha=0.2, lw=0)
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_title(sub, fontsize=8)
        ax.set_xlabel("layer", fontsize=7)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("own − other label mass", fontsize=7)
    axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return png_bytes(fig)


@runs_section("logit-lens", having="summary", id="logit-lens", title="The logit lens of the IVs")
def logit_lens_section(ctx: Context, runs: list[Run], s: h.Section) -> h.Section:
    """The logit lens of the IVs.

    Each IV (the residual after layer l at the instruction's last token, T_inst) read through the model's
    final norm and unembedding: the probability it puts on the first tokens of its own subtask's labels less
    the probability on the other subtask's labels (a token that starts labels of both counts in neither),
    averaged over rephrasings, with a bootstrap interval over rephrasings. The other subtask's labels are the
    control within a model (the two sets differ in size: see `own_tokens`, `other_tokens`); the first model
    (the base) is the control for training (`vs_control`, which cancels the sets' sizes).
    """
    for r in runs:
        summary = r.table("summary")
        models = [m for m in ctx.models if m in set(summary.model)] + [
            m for m in dict.fromkeys(summary.model) if m not in ctx.models]
        task = summary.task.iloc[0]
        s.add(h.heading(task), h.figure(mass_figure(summary, models),
                                         f"{task}: own − other label mass of the logit lens by layer (band: "
                                         f"{r.args.get('level', 0.95):.0%} bootstrap interval over rephrasings).",
                                         ctx.data(r, "summary")))
        last = summary[summary.layer == summary.layer.max()]
        cols = ["model", "subtask", "layer", "n", "own_tokens", "other_tokens", "own_mass", "other_mass", "diff", "diff_lo", "diff_hi",
                "vs_control", "vs_control_lo", "vs_control_hi"]
        s.add(h.table(last[cols], f"{task}, last layer read: label masses and their difference (interval over "
                                  "rephrasings); vs_control: the difference less the first model's.",
                      ctx.data(r, "summary")))
        if r.has("top_tokens"):
            top = r.table("top_tokens")
            top = top[(top.layer == top.layer.max()) & (top["rank"] <= 5)]
            s.add(h.table(top[["model", "subtask", "rank", "token", "prob", "own_label", "other_label"]],
                          f"{task}, last layer read: the 5 most probable tokens of the mean logit lens.",
                          ctx.data(r, "top_tokens")))
    return s
