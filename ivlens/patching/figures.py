"""Figures of a patch sweep: single-layer effect by layer, layer × layer heatmaps, models side by side.

Every function takes the tables of :mod:`ivlens.patching.interactions` and writes one PNG; models are columns
(base / SFT / DPO side by side, in the order they were given), positions are rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ivlens.page.figures import ordered
from ivlens.plots import plt

log = logging.getLogger(__name__)


def plot_single_layer(singles: pd.DataFrame, path: str | Path) -> Path:
    """Mean single-layer effect (± s.e.m.) against the patched layer; one panel per position, one line per model."""
    positions = ordered(singles.position)
    fig, axes = plt.subplots(1, len(positions), figsize=(4.5 * len(positions), 3.4), squeeze=False)
    for ax, pos in zip(axes[0], positions, strict=True):
        for model in ordered(singles.model):
            d = singles[(singles.position == pos) & (singles.model == model)].sort_values("layer")
            ax.errorbar(d.layer, d["mean"], yerr=d["sem"].fillna(0), marker="o", capsize=2, label=model)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"position: {pos}")
        ax.set_xlabel("patched layer")
        ax.set_ylabel(singles.effect.iloc[0] if "effect" in singles else "effect")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def pair_matrix(values: pd.DataFrame, column: str, n_layers: int, diagonal: pd.Series | None = None) -> np.ndarray:
    """Symmetric ``[layer, layer]`` matrix of ``values[column]`` for pairs ``"a,b"`` (NaN where absent); the
    diagonal from ``diagonal`` (indexed by layer) if given."""
    m = np.full((n_layers, n_layers), np.nan)
    for layers, v in zip(values.layers, values[column], strict=True):
        a, b = (int(x) for x in layers.split(","))
        m[a, b] = m[b, a] = v
    if diagonal is not None:
        for layer, v in diagonal.items():
            m[int(layer), int(layer)] = v
    return m


def plot_pair_heatmaps(rows: pd.DataFrame, stats: pd.DataFrame, singles: pd.DataFrame, path: str | Path,
                       effect: str = "delta_logit_vs_target") -> Path | None:
    """Per position: heatmaps of the mean joint effect of each pair (diagonal: the single layer) and of the mean
    interaction (joint − sum of singles), models side by side."""
    pairs = rows[rows.set_size == 2]
    if pairs.empty:
        return None
    models, positions = ordered(rows.model), ordered(rows.position)
    n_layers = 1 + max(int(x) for s in rows.layers.unique() for x in s.split(","))
    fig, axes = plt.subplots(2 * len(positions), len(models), figsize=(3.6 * len(models), 3.2 * 2 * len(positions)),
                             squeeze=False)
    for pi, pos in enumerate(positions):
        joint = pairs[pairs.position == pos].groupby(["model", "layers"], sort=False)[effect].mean().reset_index()
        inter = stats[(stats.position == pos) & (stats.set_size == 2)]
        mats = []
        for model in models:
            diag = singles[(singles.model == model) & (singles.position == pos)].set_index("layer")["mean"]
            mats.append((pair_matrix(joint[joint.model == model], effect, n_layers, diag),
                         pair_matrix(inter[inter.model == model], "mean_interaction", n_layers)))
        for r, (title, k) in enumerate((("joint effect", 0), ("interaction", 1))):
            vmax = np.nanmax([np.nanmax(np.abs(m[k])) if np.isfinite(m[k]).any() else 0 for m in mats]) or 1.0
            for mi, model in enumerate(models):
                ax = axes[2 * pi + r][mi]
                im = ax.imshow(mats[mi][k], cmap="RdBu_r", vmin=-vmax, vmax=vmax, origin="lower")
                ax.set_title(f"{model} · {pos} · {title}", fontsize=9)
                ax.set_xlabel("layer")
                ax.set_ylabel("layer")
            fig.colorbar(im, ax=list(axes[2 * pi + r]), shrink=0.8)
    return _save(fig, path)


def plot_linearity(table: pd.DataFrame, path: str | Path) -> Path:
    """The fraction of the effect the linear estimate explains (R², 95 % bootstrap CI) against the set size; one
    panel per position, one line per model (:func:`ivlens.patching.linearity.linearity_table`). The axis stops
    at R² = −1 (worse than the mean effect by as much again); a CI reaching below runs off it."""
    positions = ordered(table.position)
    fig, axes = plt.subplots(1, len(positions), figsize=(4.5 * len(positions), 3.4), squeeze=False)
    for ax, pos in zip(axes[0], positions, strict=True):
        for model in ordered(table.model):
            d = table[(table.position == pos) & (table.model == model)].sort_values("set_size")
            err = np.abs(np.stack([d.r2 - d.r2_lo, d.r2_hi - d.r2]).astype(float))
            ax.errorbar(d.set_size, d.r2, yerr=np.nan_to_num(err), marker="o", capsize=3, label=model)
        ax.axhline(0, color="grey", lw=0.8)
        ax.axhline(1, color="grey", lw=0.8, ls=":")
        ax.set_ylim(max(-1.0, float(np.nanmin(table.r2_lo.fillna(0).clip(upper=0)))) - 0.05, 1.05)  # R² < −1: off
        ax.set_title(f"position: {pos}")
        ax.set_xlabel("set size")
        ax.set_ylabel(f"R² of the linear estimate\n({table.effect.iloc[0]})")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def strongest_markdown(top: pd.DataFrame) -> str:
    """The strongest sets as a Markdown table (model, position, layers, mean ± sem, ``ia_top1``,
    accuracy)."""
    lines = ["| model | position | layers | mean effect | s.e.m. | IA (top-1) | accuracy (top-1) "
             "| accuracy within label space |",
             "|---|---|---|---|---|---|---|---|"]
    for r in top.itertuples():
        lines.append(f"| {r.model} | {r.position} | {r.layers} | {r.mean:.3f} | {r.sem:.3f} | "
                     f"{r.ia_top1:.2f} | {r.acc_top1:.2f} | {r.acc_space:.2f} |")
    return "\n".join(lines) + "\n"


def _save(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` and release it."""
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
