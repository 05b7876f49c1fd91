"""Figures of the probing run: accuracy by layer (one curve per model), LDA scatters, similarity heatmaps.

Each figure is written as ``figures/<name>.png`` next to ``figures/<name>.parquet``, the exact rows plotted,
so that every figure can be redrawn or checked without rerunning the models.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ivlens.plots import plt
from ivlens.runs import atomic_write_parquet

log = logging.getLogger(__name__)


def _save(fig, df: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_parquet(path.with_suffix(".parquet"), df.reset_index(drop=True))
    return path


def plot_accuracy_by_layer(acc: pd.DataFrame, path: Path, probe: str = "all", target: str = "subtask") -> Path:
    """Probe CV accuracy (± std) by layer, one curve per model; shuffled-label control dashed, held-out
    phrasings dotted, majority baseline grey.

    Args:
        acc: the ``probe_accuracy`` table (columns model, probe, target, layer, cv_mean, cv_std,
            shuffled_mean, heldout_acc, majority).
    """
    df = acc[(acc.probe == probe) & (acc.target == target)].sort_values(["model", "layer"])
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (model, g) in enumerate(df.groupby("model", sort=False)):
        c = colours[i % len(colours)]
        ax.plot(g.layer, g.cv_mean, "-o", color=c, ms=3, label=f"{model} (CV)")
        ax.fill_between(g.layer, g.cv_mean - g.cv_std, g.cv_mean + g.cv_std, color=c, alpha=0.15)
        if g.heldout_acc.notna().any():
            ax.plot(g.layer, g.heldout_acc, ":", color=c, label=f"{model} (held-out phrasings)")
        ax.plot(g.layer, g.shuffled_mean, "--", color=c, alpha=0.6, lw=1, label=f"{model} (shuffled labels)")
    if len(df):
        ax.plot(df.groupby("layer").majority.mean(), color="grey", lw=1, label="majority baseline")
    ax.set_xlabel("layer (residual after block)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Linear probe on IVs at T_inst: {probe} ({target})")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, df, path)


def scatter_phrasings(ax, panel: pd.DataFrame, classes: list[str], *, legend: bool,
                      sizes: tuple[float, float, float]) -> None:
    """One panel of a 2-D projection of IVs (``panel``: rows ``x``, ``y``, ``class``, ``split``): each class in its
    ``tab10`` colour, in ``classes`` order, its training phrasings filled and its held-out ones hollow.

    Args:
        legend: label the filled points with their class (for the figure's legend; one panel does).
        sizes: the filled points' size, the hollow points' size and their edge width.
    """
    filled, hollow, edge = sizes
    cmap = plt.get_cmap("tab10")
    for k, cls in enumerate(classes):
        points = panel[panel["class"] == cls]
        train, held_out = points[points.split == "train"], points[points.split != "train"]
        ax.scatter(train.x, train.y, s=filled, color=cmap(k % 10), label=cls if legend else None)
        ax.scatter(held_out.x, held_out.y, s=hollow, facecolors="none", edgecolors=cmap(k % 10), lw=edge)


def plot_projection(proj: pd.DataFrame, path: Path, layers: list[int], method: str = "lda") -> Path:
    """2-D projections (rows: models, columns: layers), one colour per class; held-out phrasings hollow."""
    df = proj[(proj.method == method) & proj.layer.isin(layers)]
    models = list(dict.fromkeys(df.model))
    fig, axes = plt.subplots(max(1, len(models)), max(1, len(layers)), squeeze=False,
                             figsize=(3.2 * max(1, len(layers)), 3.0 * max(1, len(models))))
    classes = sorted(df["class"].unique()) if len(df) else []
    for i, model in enumerate(models):
        for j, layer in enumerate(layers):
            ax = axes[i, j]
            scatter_phrasings(ax, df[(df.model == model) & (df.layer == layer)], classes, legend=(i, j) == (0, 0),
                              sizes=(6, 10, 0.6))
            ax.set_title(f"{model} · layer {layer}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    if classes:
        fig.legend(loc="upper center", ncol=min(len(classes), 6), fontsize=7, markerscale=2,
                   bbox_to_anchor=(0.5, 1.0 + 0.04 / max(1, len(models))))
    fig.suptitle(f"{method.upper()} of IVs (filled: training phrasings, hollow: held-out)", y=0.0, fontsize=8)
    return _save(fig, df, path)


def plot_similarity(sim: pd.DataFrame, path: Path, layer: int, centered: bool = True) -> Path:
    """Mean cosine similarity within (diagonal) and between classes, one heatmap per model at ``layer``."""
    df = sim[(sim.layer == layer) & (sim.centered == centered)]
    models = list(dict.fromkeys(df.model))
    fig, axes = plt.subplots(1, max(1, len(models)), squeeze=False, figsize=(3.6 * max(1, len(models)), 3.4))
    for j, model in enumerate(models):
        g = df[df.model == model]
        classes = list(dict.fromkeys(g.class_a))
        M = g.pivot(index="class_a", columns="class_b", values="cos").loc[classes, classes].to_numpy()
        ax = axes[0, j]
        lim = max(np.nanmax(np.abs(M)), 1e-6)
        im = ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        for a in range(len(classes)):
            for b in range(len(classes)):
                ax.text(b, a, f"{M[a, b]:.2f}", ha="center", va="center", fontsize=6)
        ax.set_title(f"{model} · layer {layer}", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"cosine similarity of IVs ({'mean-centred' if centered else 'raw'})", fontsize=9)
    return _save(fig, df, path)
