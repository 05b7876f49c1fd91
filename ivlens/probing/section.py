"""The report's probe section and its figures, drawn from finished ``probe`` runs."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ivlens.page import html as h
from ivlens.page.context import Context, runs_section
from ivlens.page.figures import ordered, present
from ivlens.page.reader import Run
from ivlens.plots import colours, plt, png_bytes

from .figures import scatter_phrasings


# ----------------------------------------------------------------------------- figures
def probe_accuracy(acc: pd.DataFrame, models: Sequence[str]) -> bytes:
    """Probe accuracy by layer; rows: probes, columns: models. CV accuracy (± std) solid, held-out phrasings
    dotted, shuffled-label control dashed, majority baseline grey."""
    acc = acc[acc.target == "subtask"] if "target" in acc else acc
    probes = ordered(acc.probe)
    models = present(models, acc.model)
    col = colours(models)
    fig, axes = plt.subplots(len(probes), len(models), figsize=(3.8 * len(models), 2.8 * len(probes)),
                             squeeze=False, sharey=True)
    for i, probe in enumerate(probes):
        for j, m in enumerate(models):
            ax = axes[i][j]
            g = acc[(acc.probe == probe) & (acc.model == m)].sort_values("layer")
            c = col[m]
            ax.plot(g.layer, g.cv_mean, "-o", ms=3, color=c, label="CV accuracy")
            ax.fill_between(g.layer, g.cv_mean - g.cv_std.fillna(0), g.cv_mean + g.cv_std.fillna(0), color=c,
                            alpha=0.15, lw=0)
            if "heldout_acc" in g and g.heldout_acc.notna().any():
                ax.plot(g.layer, g.heldout_acc, ":", color=c, lw=1.6, label="held-out phrasings")
            ax.plot(g.layer, g.shuffled_mean, "--", color="black", lw=1, alpha=0.6, label="shuffled labels")
            ax.plot(g.layer, g.majority, color="grey", lw=1, label="majority class")
            ax.set_ylim(0, 1.03)
            ax.set_title(f"{m} · probe {probe}", fontsize=9)
            ax.set_xlabel("layer (residual after block)")
            ax.xaxis.get_major_locator().set_params(integer=True)
            if j == 0:
                ax.set_ylabel("accuracy")
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return png_bytes(fig)


def projection_scatter(proj: pd.DataFrame, models: Sequence[str], layers: Sequence[int], method: str = "lda") -> bytes:
    """2-D LDA (or PCA) of the IVs; rows: layers, columns: models; one colour per subtask, held-out phrasings
    hollow."""
    df = proj[(proj.method == method) & proj.layer.isin(layers)]
    models = present(models, df.model)
    classes = sorted(df["class"].unique())
    fig, axes = plt.subplots(len(layers), len(models), figsize=(3.3 * len(models), 3.0 * len(layers) + 0.5),
                             squeeze=False, layout="constrained")
    for i, layer in enumerate(layers):
        for j, m in enumerate(models):
            ax = axes[i][j]
            scatter_phrasings(ax, df[(df.model == m) & (df.layer == layer)], classes, legend=(i, j) == (0, 0),
                              sizes=(5, 12, 0.7))
            ax.set_title(f"{m} · layer {layer}", fontsize=9)
            ax.set_xlabel(f"{method.upper()} 1", fontsize=8)
            ax.set_ylabel(f"{method.upper()} 2", fontsize=8)
            ax.tick_params(labelsize=6)
    if classes:
        fig.legend(loc="outside upper center", ncol=min(len(classes), 6), fontsize=8, markerscale=2.5,
                   title="subtask")
    return png_bytes(fig)



# ----------------------------------------------------------------------------- section
def heldout_cell(acc: float, std: float, n: float) -> str | None:
    """A held-out accuracy with its bootstrap standard deviation and number of held-out rows, e.g.
    ``0.950 ± 0.034 (n=40)``; ``None`` (shown as –) where there was no held-out evaluation."""
    if pd.isna(acc):
        return None
    spread = "" if pd.isna(std) else f" ± {std:.3f}"
    rows = "" if pd.isna(n) or n <= 0 else f" (n={int(n)})"
    return f"{acc:.3f}{spread}{rows}"


@runs_section("probe", having="probe_accuracy", id="probing", title="Linear probes on instruction vectors")
def probing_section(ctx: Context, runs: list[Run], s: h.Section) -> h.Section:
    """Probes.

    IVs of many rephrasings of each instruction, one per layer; a logistic-regression probe predicts the
    subtask. Controls: the same probe on shuffled labels, the majority class, and a probe trained on some
    phrasings and tested on phrasings it never saw (held-out).
    """
    for run in runs:
        acc = run.table("probe_accuracy")
        s.add(h.heading(f"tasks {run.manifest.get('task') or ''} ({run.rel})"),
              h.figure(probe_accuracy(acc, ctx.models),
                       "Probe accuracy by layer: cross-validated (solid, ± std band), on held-out phrasings "
                       "(dotted), shuffled-label control (dashed black) and majority class (grey); rows: probes "
                       "(`all`: every subtask; `task:…`: the two subtasks of one task), columns: models.",
                       ctx.data(run, "probe_accuracy")))
        sub = acc[acc.target == "subtask"] if "target" in acc else acc
        metrics = [(c, label) for c, label in (("cv_mean", "CV"), ("heldout_acc", "held-out"),
                                               ("shuffled_mean", "shuffled")) if c in sub]
        spread = [c for c in ("heldout_std", "heldout_n") if "heldout_acc" in sub and c in sub]
        wide = sub.pivot_table(index=["probe", "layer"], columns="model",
                               values=[c for c, _ in metrics] + spread, sort=False)
        names = dict(metrics) | {"heldout_std": "held-out std", "heldout_n": "held-out n"}
        models = [m for m in ctx.models if m in set(sub.model)]
        wide.columns = [f"{names[c]} {m}" for c, m in wide.columns]
        if len(spread) == 2:  # the held-out accuracy with its bootstrap spread and its number of rows, in one cell
            for m in models:
                wide[f"held-out {m}"] = [heldout_cell(a, sd, n) for a, sd, n in zip(
                    wide[f"held-out {m}"], wide[f"held-out std {m}"], wide[f"held-out n {m}"], strict=True)]
        wide = wide[[f"{label} {m}" for _, label in metrics for m in models]].reset_index()
        majority = sub.groupby(["probe", "layer"]).majority.mean()  # aligned by (probe, layer), not by row order
        wide["majority"] = majority.reindex(pd.MultiIndex.from_frame(wide[["probe", "layer"]])).to_numpy()
        s.add(h.table(wide, "Probe accuracy by layer and model: cross-validated (CV), on held-out phrasings (± its "
                            "bootstrap standard deviation over the n held-out rows; where every one is right the "
                            "spread is 0 and the error rate is still only bounded by about 3/n) and with shuffled "
                            "labels; majority: the majority class's share.",
                      ctx.data(run, "probe_accuracy")))
        if run.has("projections"):
            proj = run.table("projections")
            layers = run.manifest.get("figure_layers") or sorted(proj.layer.unique())[-1:]
            method = "lda" if (proj.method == "lda").any() else "pca"
            s.add(h.figure(projection_scatter(proj, ctx.models, layers, method),
                           f"{method.upper()} of the IVs at layers {', '.join(map(str, layers))} (rows), models "
                           "side by side (columns); one colour per subtask, filled: training phrasings, hollow: "
                           "held-out phrasings.", ctx.data(run, "projections")))
    return s



probing_section.omitted = ("probes", "probe")  # the page's note when no run draws it
