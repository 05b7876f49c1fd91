"""The report's figures: plain tables in, PNG bytes out (matplotlib, Agg backend).

Every function takes the rows a run directory holds (see :mod:`ivlens.report.reader`) and the order of the
models (base / SFT / DPO), draws the models side by side with one colour each, labels every axis and colour
bar, and returns the PNG as ``bytes`` for embedding. Nothing here reads files or knows about HTML.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

#: the report's resolution: figures are embedded at their natural size, and at 100 dpi the smallest text (7 pt tick
#: labels) is still about 10 px high
DPI = 100
#: Human names of the patch effects (the ``effect`` column of a patch run's tables).
EFFECT_LABELS = {
    "delta_logit_vs_target": "Δ label logit vs query-only run",
    "delta_prob_vs_target": "Δ label probability vs query-only run",
    "delta_rr_vs_target": "Δ reciprocal rank vs query-only run",
    "delta_logit_diff_vs_target": "Δ logit(label) − logit(other label) vs query-only run",
}


def effect_label(effect: str) -> str:
    return EFFECT_LABELS.get(effect, effect)


def colours(models: Sequence[str]) -> dict[str, str]:
    """One fixed colour per model, in the study's model order."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {m: cycle[i % len(cycle)] for i, m in enumerate(models)}


def _png(fig) -> bytes:
    """The figure as PNG bytes, drawn once. Each figure is laid out where it is drawn (``tight_layout``, or a
    constrained layout engine where a legend or colour bar sits outside the axes), so there is no
    ``bbox_inches="tight"``: that draws the whole figure twice and measures every artist in between, most of a
    report's time."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def _order(values) -> list:
    return list(dict.fromkeys(values))


def _present(order: Sequence[str], values) -> list[str]:
    """``order`` restricted to the values present, then any value ``order`` lacks."""
    have = _order(values)
    return [m for m in order if m in have] + [m for m in have if m not in order]


# ----------------------------------------------------------------------------- eval
def eval_bars(summary: pd.DataFrame, models: Sequence[str]) -> bytes:
    """Accuracy and IA per task · subtask · condition (rows: metric; columns: task), one bar per model.

    ``summary``: eval ``summary`` rows (model, task, subtask, condition, ia, accuracy) of one split."""
    tasks = _order(summary.task)
    models = _present(models, summary.model)
    col = colours(models)
    fig, axes = plt.subplots(2, len(tasks), figsize=(max(4.8, 0.55 * 6 * len(models)) * len(tasks) / 1.4, 5.6),
                             squeeze=False)
    width = 0.8 / max(1, len(models))
    for j, task in enumerate(tasks):
        d = summary[summary.task == task]
        groups = _order(zip(d.subtask, d.condition, strict=True))
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
    return _png(fig)


# ----------------------------------------------------------------------------- patching
def single_layer_curves(singles: pd.DataFrame, models: Sequence[str]) -> bytes:
    """Mean single-layer effect ± s.e.m. against the patched layer; one panel per position, one line per model."""
    positions = _order(singles.position)
    models = _present(models, singles.model)
    col = colours(models)
    fig, axes = plt.subplots(1, len(positions), figsize=(4.8 * len(positions), 3.5), squeeze=False)
    for ax, pos in zip(axes[0], positions, strict=True):
        for m in models:
            d = singles[(singles.position == pos) & (singles.model == m)].sort_values("layer")
            ax.plot(d.layer, d["mean"], "-o", ms=3, color=col[m], label=m)
            sem = d["sem"].fillna(0)
            ax.fill_between(d.layer, d["mean"] - sem, d["mean"] + sem, color=col[m], alpha=0.18, lw=0)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"patched at the {pos} position", fontsize=10)
        ax.set_xlabel("patched layer")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].set_ylabel(f"mean effect\n({effect_label(singles.effect.iloc[0])})" if "effect" in singles
                          else "mean effect")
    axes[0][-1].legend(title="model", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _layers(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in str(s).split(","))


def set_matrices(stats: pd.DataFrame, singles: pd.DataFrame, value: str, set_size: int, n_layers: int
                 ) -> tuple[np.ndarray, list[str], list[str]]:
    """One (model, position)'s values as a matrix with its row and column labels.

    Pairs: ``[layer a, layer b]`` symmetric, the diagonal the single layer when ``value`` is a joint effect.
    Triplets: rows are the two lower layers ``a,b``, columns the highest layer ``c`` (NaN where ``c ≤ b``).
    ``stats``: the interactions rows of that model and position."""
    if set_size == 2:
        m = np.full((n_layers, n_layers), np.nan)
        for layers, v in zip(stats.layers, stats[value], strict=True):
            a, b = _layers(layers)
            m[a, b] = m[b, a] = v
        if value == "mean_joint":
            for layer, v in zip(singles.layer, singles["mean"], strict=True):
                m[int(layer), int(layer)] = v
        labels = [str(i) for i in range(n_layers)]
        return m, labels, labels
    pairs = [(a, b) for b in range(1, n_layers - 1) for a in range(b)]  # by b, so c > b is a staircase
    m = np.full((len(pairs), n_layers), np.nan)
    index = {p: i for i, p in enumerate(pairs)}
    for layers, v in zip(stats.layers, stats[value], strict=True):
        a, b, c = sorted(_layers(layers))
        m[index[(a, b)], c] = v
    return m, [f"{a},{b}" for a, b in pairs], [str(i) for i in range(n_layers)]


def set_heatmaps(interactions: pd.DataFrame, singles: pd.DataFrame, models: Sequence[str], set_size: int,
                 value: str, n_layers: int) -> bytes:
    """Heatmaps of ``value`` (``mean_joint`` or ``mean_interaction``) over the pairs or triplets of layers; rows:
    positions, columns: models. Each position (row) has its own diverging colour scale centred on 0, shared by
    the models and labelled on its colour bar (the last position's values are fixed by construction and far
    larger; one scale for both would hide the other positions)."""
    stats = interactions[interactions.set_size == set_size]
    positions = _order(stats.position)
    models = _present(models, stats.model)
    effect = effect_label(stats.effect.iloc[0]) if "effect" in stats and len(stats) else "effect"
    mats = {(p, m): set_matrices(stats[(stats.position == p) & (stats.model == m)],
                                 singles[(singles.position == p) & (singles.model == m)], value, set_size, n_layers)
            for p in positions for m in models}
    rows_per = mats[(positions[0], models[0])][0].shape[0] if mats else n_layers
    h = max(2.6, 1.0 + (0.30 if set_size == 2 else 0.17) * rows_per)
    w = max(2.8, 1.0 + 0.32 * n_layers)
    fig, axes = plt.subplots(len(positions), len(models), figsize=(w * len(models) + 1.6, h * len(positions)),
                             squeeze=False, constrained_layout=True)
    what = "mean joint effect" if value == "mean_joint" else "mean interaction\n(joint − sum of singles)"
    for i, p in enumerate(positions):
        vmax = max([np.nanmax(np.abs(mats[(p, m)][0])) for m in models if np.isfinite(mats[(p, m)][0]).any()]
                   + [1e-12])
        im = None
        for j, m in enumerate(models):
            mat, rlab, clab = mats[(p, m)]
            ax = axes[i][j]
            im = ax.imshow(mat, cmap="RdBu_r", vmin=-vmax, vmax=vmax, origin="lower", aspect="auto",
                           interpolation="nearest")
            ax.set_xticks(range(len(clab)), clab, fontsize=7)
            step = max(1, len(rlab) // 24)
            ax.set_yticks(range(0, len(rlab), step), rlab[::step], fontsize=7)
            ax.set_title(f"{m} · {p} position", fontsize=9)
            ax.set_xlabel("layer b" if set_size == 2 else "highest layer c")
            ax.set_ylabel("layer a" if set_size == 2 else "lower layers a,b")
        cb = fig.colorbar(im, ax=list(axes[i]), shrink=0.9)
        cb.set_label(f"{what}, {p} position\n{effect}", fontsize=8)
    return _png(fig)


def linearity_curves(table: pd.DataFrame, models: Sequence[str]) -> bytes:
    """How much of the patch effect the linear estimate explains, against the set size: R² (top row) and mean
    |nonlinearity| / mean |effect| (bottom row), each with its 95 % bootstrap CI over samples; one panel per
    position, one line per model (:func:`ivlens.patching.linearity.linearity_table`)."""
    positions = _order(table.position)
    models = _present(models, table.model)
    col = colours(models)
    fig, axes = plt.subplots(2, len(positions), figsize=(4.2 * len(positions), 6.0), squeeze=False, sharex=True)
    for j, pos in enumerate(positions):
        for i, (value, label) in enumerate((("r2", "R² of the linear estimate"),
                                            ("rel_nonlinearity", "mean |nonlinearity| / mean |effect|"))):
            ax = axes[i][j]
            for k, m in enumerate(models):
                d = table[(table.position == pos) & (table.model == m)].sort_values("set_size")
                x = d.set_size + (k - (len(models) - 1) / 2) * 0.06  # side by side, not on top of each other
                err = np.nan_to_num(np.abs(np.stack([d[value] - d[f"{value}_lo"], d[f"{value}_hi"] - d[value]])
                                           .astype(float)))
                ax.errorbar(x, d[value], yerr=err, marker="o", ms=4, capsize=3, color=col[m], label=m)
            ax.axhline(0, color="grey", lw=0.8)
            ax.axhline(1, color="grey", lw=0.8, ls=":")
            if value == "r2":  # R² below −1 (worse than the mean by as much again) runs off the axis
                ax.set_ylim(max(-1.0, float(np.nanmin(table.r2_lo.fillna(0).clip(upper=0)))) - 0.05, 1.05)
            ax.set_ylabel(label, fontsize=9)
            if i == 0:
                ax.set_title(f"patched at the {pos} position", fontsize=10)
            else:
                ax.set_xlabel("layers in the set")
            ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][-1].legend(title="model", fontsize=8)
    fig.tight_layout()
    return _png(fig)


# ----------------------------------------------------------------------------- probing
def probe_accuracy(acc: pd.DataFrame, models: Sequence[str]) -> bytes:
    """Probe accuracy by layer; rows: probes, columns: models. CV accuracy (± std) solid, held-out phrasings
    dotted, shuffled-label control dashed, majority baseline grey."""
    acc = acc[acc.target == "subtask"] if "target" in acc else acc
    probes = _order(acc.probe)
    models = _present(models, acc.model)
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
    return _png(fig)


def projection_scatter(proj: pd.DataFrame, models: Sequence[str], layers: Sequence[int], method: str = "lda") -> bytes:
    """2-D LDA (or PCA) of the IVs; rows: layers, columns: models; one colour per subtask, held-out phrasings
    hollow."""
    df = proj[(proj.method == method) & proj.layer.isin(layers)]
    models = _present(models, df.model)
    classes = sorted(df["class"].unique())
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(len(layers), len(models), figsize=(3.3 * len(models), 3.0 * len(layers) + 0.5),
                             squeeze=False, layout="constrained")
    for i, layer in enumerate(layers):
        for j, m in enumerate(models):
            ax = axes[i][j]
            g = df[(df.model == m) & (df.layer == layer)]
            for k, cls in enumerate(classes):
                h = g[g["class"] == cls]
                tr, te = h[h.split == "train"], h[h.split != "train"]
                ax.scatter(tr.x, tr.y, s=5, color=cmap(k % 10), label=cls if (i, j) == (0, 0) else None)
                ax.scatter(te.x, te.y, s=12, facecolors="none", edgecolors=cmap(k % 10), lw=0.7)
            ax.set_title(f"{m} · layer {layer}", fontsize=9)
            ax.set_xlabel(f"{method.upper()} 1", fontsize=8)
            ax.set_ylabel(f"{method.upper()} 2", fontsize=8)
            ax.tick_params(labelsize=6)
    if classes:
        fig.legend(loc="outside upper center", ncol=min(len(classes), 6), fontsize=8, markerscale=2.5,
                   title="subtask")
    return _png(fig)


# ----------------------------------------------------------------------------- tracing
def overlap_curves(curves: dict[str, dict[str, Sequence[float]]], models: Sequence[str]) -> bytes:
    """Weighted Jaccard of the two subtasks' path graphs by layer (solid) against two rephrasings of one
    instruction (dashed, the baseline); one panel per model. ``curves``: ``{model: {"ab": [...], "baseline": [...]}}``."""
    models = _present(models, curves)
    col = colours(models)
    fig, axes = plt.subplots(1, len(models), figsize=(3.8 * len(models), 3.2), squeeze=False, sharey=True)
    for ax, m in zip(axes[0], models, strict=True):
        ab, base = curves[m].get("ab") or [], curves[m].get("baseline") or []
        if len(ab):
            ax.plot(range(len(ab)), ab, "-o", ms=3, color=col[m], label="instruction A vs B")
        if len(base):
            ax.plot(range(len(base)), base, "--", color="grey", label="two rephrasings of A")
        ax.set_ylim(0, 1.03)
        ax.set_xlabel("layer")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(m, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("weighted Jaccard of edge mass")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def selectivity(table: pd.DataFrame, models: Sequence[str]) -> bytes:
    """The selectivity table of a ``trace --compare`` run (:func:`ivlens.tracing.figures.draw_selectivity`): the
    gap ± CI by layer against the permutation null and the base model's gap, and the difference in differences."""
    from ivlens.tracing.figures import draw_selectivity

    models = _present(models, table.model)
    with_did = bool(table.is_base.any()) and len(models) > 1
    fig = plt.figure(figsize=(3.6 * len(models), 5.6 if with_did else 3.2), layout="constrained")
    draw_selectivity(fig, table, models, colours(models))
    return _png(fig)


def sample_paths(rows: pd.DataFrame, models: Sequence[str], top: int = 10) -> bytes:
    """The top ``top`` exact paths of one sample, drawn over the token × layer grid; rows: the two subtasks'
    instructions, columns: models. Red paths raise the answer's logit, blue ones lower it; width by |value|."""
    from ivlens.tracing.figures import draw_paths
    from ivlens.tracing.paths import Hop, Path

    subtasks = _order(rows.subtask)
    models = _present(models, rows.model)
    n_tok = max(len(json.loads(t)) for t in rows.tokens)
    n_layers = int(rows.n_layers.max())
    fig, axes = plt.subplots(len(subtasks), len(models), squeeze=False,
                             figsize=(max(3.6, 1.6 + 0.42 * n_layers) * len(models), (1.0 + 0.24 * n_tok) * len(subtasks)))
    for i, sub in enumerate(subtasks):
        for j, m in enumerate(models):
            g = rows[(rows.subtask == sub) & (rows.model == m)].sort_values("rank").head(top)
            ax = axes[i][j]
            if g.empty:
                ax.set_axis_off()
                continue
            paths = [Path(r.source, int(r.layer), int(r.pos), tuple(Hop(**h) for h in json.loads(r.hops)),
                          float(r.value)) for r in g.itertuples()]
            tokens = [t.replace("Ġ", "·").replace("Ċ", "⏎") for t in json.loads(g.tokens.iloc[0])]
            draw_paths(ax, paths, tokens, n_layers)
            t_inst = g.t_inst.iloc[0]
            if pd.notna(t_inst):
                ax.axhline(float(t_inst), color="tab:green", lw=1.4, alpha=0.9, ls=":")
                ax.get_yticklabels()[int(t_inst)].set_color("tab:green")
            query = g["query"].iloc[0] if "query" in g else ""
            ax.set_title(f"{m} · {sub}" + (f" (query {query!r})" if query else ""), fontsize=9)
            if j:
                ax.set_ylabel("")
    fig.tight_layout()
    return _png(fig)


# ----------------------------------------------------------------------------- organism
def organism_transfer(iv: pd.DataFrame, models: Sequence[str], metric: str = "exact") -> bytes:
    """The organism card's single-layer IV transfer: share of queries answered right (``exact``) after patching the
    IV at one layer; rows: subtasks, columns: stages, one line per target/position."""
    subs = _order(zip(iv.task, iv.subtask, strict=True))
    stages = _present(models, iv.stage)
    keys = _order(iv.target + "/" + iv.position)
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(len(subs), len(stages), figsize=(3.4 * len(stages), 2.4 * len(subs)), squeeze=False,
                             sharey=True, layout="constrained")
    for i, (task, sub) in enumerate(subs):
        for j, st in enumerate(stages):
            ax = axes[i][j]
            g = iv[(iv.task == task) & (iv.subtask == sub) & (iv.stage == st)]
            for k, key in enumerate(keys):
                h = g[(g.target + "/" + g.position) == key].sort_values("layer")
                ax.plot(h.layer, h[metric], "-o", ms=2.5, color=cmap(k % 10), label=key)
            ax.set_ylim(0, 1.03)
            ax.set_title(f"{st} · {sub}", fontsize=9)
            ax.set_xlabel("patched layer")
            ax.xaxis.get_major_locator().set_params(integer=True)
            if j == 0:
                ax.set_ylabel("accuracy patched" if metric == "exact" else metric)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=min(6, len(keys)), fontsize=8,
               title="target / position")
    return _png(fig)


# ----------------------------------------------------------------------------- IV construction
def _component_label(component: str, head: int) -> str:
    return f"H{head}" if component == "head" else {"mlp": "MLP", "attn_bias": "attn bias", "mlp_bias": "MLP bias",
                                                   "embed": "embed", "pos_embed": "pos embed"}.get(component, component)


def construction_grid(comp: pd.DataFrame) -> pd.DataFrame:
    """One model's read-out components summed over positions: ``layer`` (rows, ``-1`` the embeddings) ×
    component label (columns: heads, MLP, biases), values the signed contribution."""
    c = comp.assign(label=[_component_label(k, h) for k, h in zip(comp["component"], comp["head"], strict=True)])
    grid = c.pivot_table(index="layer", columns="label", values="value", aggfunc="sum", fill_value=0.0)
    heads = sorted((x for x in grid.columns if x.startswith("H")), key=lambda x: int(x[1:]))
    rest = [x for x in ("MLP", "attn bias", "MLP bias", "embed", "pos embed") if x in grid.columns]
    return grid[heads + rest]


def readout_value(comp: pd.DataFrame) -> float:
    """The traced value ``y`` of one model's component rows: its sources (embeddings and biases) sum to it."""
    return float(comp[comp.component.isin(["embed", "pos_embed", "attn_bias", "mlp_bias"])].value.sum())


def construction_heatmaps(comp: pd.DataFrame, models: Sequence[str]) -> bytes:
    """Per model (columns), the signed contribution of every head, MLP, bias and the embeddings (x) of each layer
    (y) to the traced read-out, in units of that model's ``|y|`` (probes of different models differ in scale);
    one symmetric colour scale for all panels."""
    order = _present(models, comp.model)
    grids = {}
    for m in order:
        part = comp[comp.model == m]
        grids[m] = construction_grid(part) / (abs(readout_value(part)) or 1.0)
    vmax = max(float(np.abs(g.to_numpy()).max()) for g in grids.values()) or 1.0
    fig, axes = plt.subplots(1, len(order), figsize=(3.6 * len(order) + 1, 3.2), squeeze=False, sharey=True,
                             layout="constrained")
    im = None
    for ax, m in zip(axes[0], order, strict=True):
        g = grids[m]
        im = ax.imshow(g.to_numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(g.columns)), g.columns, rotation=60, fontsize=7)
        ax.set_yticks(range(len(g.index)), ["emb" if i < 0 else str(i) for i in g.index], fontsize=7)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("component")
    axes[0][0].set_ylabel("layer")
    fig.colorbar(im, ax=axes[0].tolist(), label="contribution / |w · resid_l[t]|")
    return _png(fig)


def construction_tokens(comp: pd.DataFrame, models: Sequence[str]) -> bytes:
    """Per source token (y), the total of every path that starts at it (its embedding's edge, with the learned
    position embedding where there is one); one bar per model. With the bias terms they sum to the value."""
    rows = comp[comp.component.isin(["embed", "pos_embed"])]
    scale = {m: abs(readout_value(comp[comp.model == m])) or 1.0 for m in dict.fromkeys(comp.model)}
    tot = rows.groupby(["model", "src", "token"], as_index=False).value.sum()
    tot["value"] = tot.value / tot.model.map(scale)
    order = _present(models, tot.model)
    srcs = sorted(tot.src.unique())
    labels = [f"{s}: {tot[tot.src == s].token.iloc[0]}" for s in srcs]
    col = colours(models)
    fig, ax = plt.subplots(figsize=(6, 0.28 * len(srcs) * max(1, len(order)) / 2 + 1.5), layout="constrained")
    width = 0.8 / max(1, len(order))
    for i, m in enumerate(order):
        v = tot[tot.model == m].set_index("src").value.reindex(srcs, fill_value=0.0)
        ax.barh(np.arange(len(srcs)) + i * width, v.to_numpy(), height=width, color=col[m], label=m)
    ax.set_yticks(np.arange(len(srcs)) + width * (len(order) - 1) / 2, labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.5)
    ax.set_xlabel("all paths from this token / |w · resid_l[t]|")
    ax.legend(fontsize=7)
    return _png(fig)
