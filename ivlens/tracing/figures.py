"""Tracer figures (matplotlib, Agg backend): top paths on the token × layer grid, per-layer path mass,
overlap-by-layer curves and head-activity heatmaps. Each function takes plain data and writes one file."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path as FilePath

import numpy as np

from ivlens.plots import plt

from .graph import AttributionGraph
from .paths import Path


def _save(fig, out: str | FilePath) -> FilePath:
    out = FilePath(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_paths(paths: Sequence[Path], tokens: Sequence[str], n_layers: int, out: str | FilePath,
               title: str = "top paths") -> FilePath:
    """Each path as a polyline over (layer, position): residual segments horizontal, a head hop from ``src`` to
    ``dst`` across its layer (labelled ``H<h>``), MLP hops as squares; line width by ``|value|``, colour by sign."""
    T = len(tokens) or 1 + max([p.pos for p in paths] + [h.dst for p in paths for h in p.hops], default=0)
    fig, ax = plt.subplots(figsize=(1.0 + 0.35 * n_layers, 1.0 + 0.28 * T))
    draw_paths(ax, paths, tokens, n_layers)
    ax.set_title(f"{title} (red +, blue −)", fontsize=9)
    return _save(fig, out)


def draw_paths(ax, paths: Sequence[Path], tokens: Sequence[str], n_layers: int, vmax: float | None = None) -> None:
    """Draw ``paths`` on ``ax`` over the token × layer grid (see :func:`plot_paths`); ``vmax``: the ``|value|``
    drawn at full width (default: the largest here), so that several panels can share one scale."""
    T = len(tokens) or 1 + max([p.pos for p in paths] + [h.dst for p in paths for h in p.hops], default=0)
    vmax = vmax or max((abs(p.value) for p in paths), default=1.0) or 1.0
    for p in paths:
        x, y = [-0.5 if p.source in ("embed", "pos_embed") else p.layer + 0.5], [p.pos]
        for h in p.hops:
            if h.kind == "head":
                x += [h.layer, h.layer + 1]
                y += [h.src, h.dst]
                ax.annotate(f"H{h.head}", ((h.layer + 0.5), (h.src + h.dst) / 2), fontsize=6, ha="center")
            else:
                ax.scatter([h.layer + 0.5], [h.dst], marker="s", s=14, color="gray", zorder=3)
        x.append(n_layers + 0.5)
        y.append(y[-1])
        ax.plot(x, y, color="tab:red" if p.value > 0 else "tab:blue", alpha=0.7,
                linewidth=0.5 + 4.0 * abs(p.value) / vmax)
    ax.set_yticks(range(T))
    ax.set_yticklabels([f"{i} {t}" for i, t in enumerate(tokens)] if tokens else range(T), fontsize=7)
    ax.set_ylim(T - 0.5, -0.5)
    ax.set_xlim(-0.7, n_layers + 0.7)
    # layer l spans [l, l + 1] (its head hops cross it); the path starts at the embedding, ends at the logit
    ax.set_xticks([-0.5, *(i + 0.5 for i in range(n_layers)), n_layers + 0.5],
                  ["emb", *(str(i) for i in range(n_layers)), "logit"], fontsize=7)
    ax.set_xlabel("layer")


def plot_layer_mass(graph: AttributionGraph, out: str | FilePath, title: str = "path mass per layer") -> FilePath:
    """Stacked bars of the absolute edge mass per layer through heads, attention biases and MLPs."""
    mass = graph.layer_mass().numpy()  # [layer, 3]
    fig, ax = plt.subplots(figsize=(1.5 + 0.25 * graph.n_layers, 3))
    bottom = np.zeros(graph.n_layers)
    for i, name in enumerate(("heads", "attention bias", "MLP")):
        ax.bar(range(graph.n_layers), mass[:, i], bottom=bottom, label=name)
        bottom += mass[:, i]
    ax.set_xlabel("layer")
    ax.set_ylabel("Σ |edge contribution|")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out)


def plot_overlap_curves(curves: Mapping[str, Sequence[float]], out: str | FilePath,
                        title: str = "per-layer similarity of the two subtasks' graphs") -> FilePath:
    """One line per curve (e.g. ``organism-sft A vs B`` and ``… rephrasings``): weighted Jaccard by layer."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, ys in curves.items():
        if len(ys):
            ax.plot(range(len(ys)), ys, marker="o", markersize=3, label=name,
                    linestyle="--" if "rephras" in name else "-")
    ax.set_xlabel("layer")
    ax.set_ylabel("weighted Jaccard")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out)


def plot_head_activity(activity: Mapping[str, np.ndarray], out: str | FilePath,
                       title: str = "head activity of paths leaving T_inst") -> FilePath:
    """Layer × head heatmaps, one per subtask, plus their difference when there are exactly two."""
    names = list(activity)
    mats = [np.asarray(activity[n]) for n in names]
    if len(mats) == 2:
        names.append(f"{names[0]} − {names[1]}")
        mats.append(mats[0] - mats[1])
    fig, axes = plt.subplots(1, len(mats), figsize=(3.2 * len(mats), 3.5), squeeze=False)
    vmax = max(float(m.max()) for m in mats[:2]) or 1.0
    for i, (ax, name, m) in enumerate(zip(axes[0], names, mats, strict=True)):
        diff = i == 2
        lim = float(np.abs(m).max()) or 1.0
        im = ax.imshow(m, aspect="auto", cmap="RdBu_r" if diff else "viridis",
                       vmin=-lim if diff else 0, vmax=lim if diff else vmax)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=9)
    return _save(fig, out)


def draw_selectivity(fig, table, models: Sequence[str], colours: Mapping[str, str] | None = None) -> None:
    """The selectivity table (:mod:`ivlens.tracing.selectivity`, one row per model × layer) on ``fig``, one column
    per model: top, the gap (same instruction − different) ± its corrected CI by layer, the permutation null's
    band (grey, at the level the verdict's correction tests each layer at: ``null_level``) and the base model's
    gap (dashed) for comparison; bottom (where a base model is named), the
    difference in differences ± CI. Filled markers: a verdict (selective; more/less selective than base)."""
    models = [m for m in models if m in set(table.model)] + [m for m in dict.fromkeys(table.model) if m not in models]
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = colours or {m: cycle[i % len(cycle)] for i, m in enumerate(models)}
    base = next((m for m in models if table[table.model == m].is_base.any()), None)
    with_did = base is not None and len(models) > 1
    axes = fig.subplots(2 if with_did else 1, len(models), squeeze=False, sharex=True, sharey="row")
    level = float(table.ci_level.iloc[0])
    for j, m in enumerate(models):
        t = table[table.model == m].sort_values("layer")
        x = t.layer.to_numpy()
        ax = axes[0][j]
        ax.fill_between(x, t.null_lo, t.null_hi, color="grey", alpha=0.25, lw=0, label="permutation null")
        ax.axhline(0, color="black", lw=0.6)
        if base is not None and m != base:
            b = table[table.model == base].sort_values("layer")
            ax.plot(b.layer, b.gap, "--", color="grey", lw=1.2, label=f"{base} (base)")
        _errorbars(ax, x, t.gap.to_numpy(), t.gap_lo.to_numpy(), t.gap_hi.to_numpy(), t.selective.to_numpy(),
                   colours[m], "gap")
        ax.set_title(f"{m} (n = {int(t.n.iloc[0])})" + (" · base" if m == base else ""), fontsize=9)
        ax.grid(alpha=0.3)
        if j == 0:
            ax.set_ylabel("gap: J(same instr.) − J(different)", fontsize=8)
        if with_did:
            ax = axes[1][j]
            ax.axhline(0, color="black", lw=0.6)
            if m == base:
                ax.text(0.5, 0.5, f"{base}: the base model\n(the others' gaps minus its gap below)", ha="center",
                        va="center", transform=ax.transAxes, fontsize=8, color="grey")
            else:
                verdict = t.did_verdict.isin(["more selective than base", "less selective than base"])
                _errorbars(ax, x, t["did"].to_numpy(), t.did_lo.to_numpy(), t.did_hi.to_numpy(), verdict.to_numpy(),
                           colours[m], "difference in differences")
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(f"gap − {base}'s gap", fontsize=8)
        axes[-1][j].set_xlabel("layer")
        axes[-1][j].xaxis.get_major_locator().set_params(integer=True)
    axes[0][-1].legend(fontsize=7)
    correction, alpha = _CORRECTION_NAMES.get(table.correction.iloc[0], table.correction.iloc[0]), table.alpha.iloc[0]
    caption = (f"selectivity by layer: mean ± {level:.1%} bootstrap CI (Bonferroni over layers); grey: the "
               f"permutation null at each layer's {correction} level (above it: {correction}-corrected p < "
               f"{alpha:g}); filled: a verdict ({correction}-corrected p < {alpha:g} and CI excluding 0)")
    fig.suptitle(textwrap.fill(caption, max(50, int(fig.get_figwidth() * 15))), fontsize=8)


#: how a figure names a correction of :data:`ivlens.specs.Correction`
_CORRECTION_NAMES = {"holm": "Holm", "bh": "Benjamini–Hochberg"}


def _errorbars(ax, x, y, lo, hi, filled, colour, label) -> None:
    ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="none", ecolor=colour, elinewidth=1.2, capsize=2)
    ax.plot(x, y, "-", color=colour, lw=1, label=label)
    filled = np.asarray(filled, dtype=bool)
    ax.scatter(x[filled], y[filled], color=colour, s=22, zorder=3)
    ax.scatter(x[~filled], y[~filled], facecolor="white", edgecolor=colour, s=22, zorder=3)


def plot_selectivity(table, out: str | FilePath, models: Sequence[str] | None = None) -> FilePath:
    """:func:`draw_selectivity` into one file."""
    models = list(models or dict.fromkeys(table.model))
    fig = plt.figure(figsize=(3.6 * len(models), 5.4 if table.is_base.any() and len(models) > 1 else 3.0),
                     layout="constrained")
    draw_selectivity(fig, table, models)
    return _save(fig, out)
