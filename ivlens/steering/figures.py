"""Figures of steering: dose-response curves and steering against patching per layer (tables in, PNG bytes out;
:func:`plot_dose_response` writes the run's file). Models side by side in the given order (base / SFT / DPO)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ivlens.page.figures import ordered
from ivlens.plots import colours, plt
from ivlens.plots import png_bytes as _png
from ivlens.runs import atomic_write_bytes, slug


def dose_response_curves(dose: pd.DataFrame, models: Sequence[str], vector: str, metric: str = "ia_top1") -> bytes:
    """``metric`` (mean ± s.e.m.) against α for one vector: rows of panels are positions, columns models, one line
    per steered layer (dark: early, light: late)."""
    d = dose[dose.vector == vector]
    models = [m for m in models if m in set(d.model)] or ordered(d.model)
    positions = ordered(d.position)
    layers = sorted(d.layer.unique())
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(len(positions), len(models), figsize=(3.6 * len(models), 2.7 * len(positions)),
                             squeeze=False, sharey=True)
    for i, pos in enumerate(positions):
        for j, m in enumerate(models):
            ax = axes[i][j]
            for k, layer in enumerate(layers):
                c = d[(d.model == m) & (d.position == pos) & (d.layer == layer)].sort_values("alpha")
                colour = cmap(k / max(1, len(layers) - 1) * 0.9)
                ax.plot(c.alpha, c[metric], "-o", ms=2.5, color=colour, label=f"layer {layer}")
                sem = c[f"{metric}_sem"].fillna(0)
                ax.fill_between(c.alpha, c[metric] - sem, c[metric] + sem, color=colour, alpha=0.12, lw=0)
            ax.set_xscale("symlog", linthresh=0.5)
            ax.set_title(f"{m} · steered at {pos}", fontsize=9)
            if i == len(positions) - 1:
                ax.set_xlabel("α (units of the mean IV norm)")
            if j == 0:
                ax.set_ylabel({"ia_top1": "IA (top-1)", "acc_top1": "accuracy"}.get(metric, metric))
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"vector: {vector}", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def versus_patching(compare: pd.DataFrame, models: Sequence[str], unsteered: pd.DataFrame | None = None) -> bytes:
    """Per model (panels): best steering ``ia_top1`` per layer against the best single-layer patch at that layer
    and the best pair/triplet containing it; the unsteered ``ia_top1`` (α = 0) as a dotted line. Layers where
    steering falls significantly short are marked with a cross."""
    models = [m for m in models if m in set(compare.model)] or ordered(compare.model)
    col = colours(["steering", "single-layer patch", "best set with the layer"])
    fig, axes = plt.subplots(1, len(models), figsize=(3.8 * len(models), 3.2), squeeze=False, sharey=True)
    for ax, m in zip(axes[0], models, strict=True):
        c = compare[compare.model == m].sort_values("layer")
        ax.plot(c.layer, c.steer_ia_top1, "-o", ms=4, color=col["steering"],
                label="steering (best α, vector, position)")
        ax.plot(c.layer, c.patch_ia_top1, "-s", ms=4, color=col["single-layer patch"], label="patching: single layer")
        ax.plot(c.layer, c.set_ia_top1, "--^", ms=4, color=col["best set with the layer"],
                label="patching: best pair/triplet with the layer")
        if "verdict" in c:
            short = c[c.verdict == "falls short"]
            ax.plot(short.layer, short.steer_ia_top1, "x", ms=9, color="black", label="steering significantly below")
        if unsteered is not None and m in set(unsteered.model):
            ax.axhline(float(unsteered.loc[unsteered.model == m, "ia_top1"].iloc[0]), color="grey", ls=":", lw=1,
                       label="unsteered query-only")
        ax.set_title(m, fontsize=10)
        ax.set_xlabel("layer")
        ax.set_ylim(-0.03, 1.03)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].set_ylabel("IA (top-1)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)


def plot_dose_response(dose: pd.DataFrame, directory: str | Path) -> list[Path]:
    """The run's figures: ``dose_response_<vector>.png``, ``ia_top1`` against α, one file per vector."""
    out = []
    for v in ordered(dose.vector):
        path = Path(directory) / f"dose_response_{slug(v)}.png"
        atomic_write_bytes(path, dose_response_curves(dose, ordered(dose.model), v))
        out.append(path)
    return out
