"""The report's IV-localisation section and its figures, drawn from finished ``patch`` runs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ivlens.page import html as h
from ivlens.page.context import Context, n_layers_of, runs_section
from ivlens.page.figures import effect_label, layer_set, ordered, present
from ivlens.page.reader import Run
from ivlens.plots import colours, plt, png_bytes


# ----------------------------------------------------------------------------- figures
def single_layer_curves(singles: pd.DataFrame, models: Sequence[str]) -> bytes:
    """Mean single-layer effect ± s.e.m. against the patched layer; one panel per position, one line per model."""
    positions = ordered(singles.position)
    models = present(models, singles.model)
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
    return png_bytes(fig)


def set_matrices(stats: pd.DataFrame, singles: pd.DataFrame, value: str, set_size: int, n_layers: int
                 ) -> tuple[np.ndarray, list[str], list[str]]:
    """One (model, position)'s values as a matrix with its row and column labels.

    Pairs: ``[layer a, layer b]`` symmetric, the diagonal the single layer when ``value`` is a joint effect.
    Triplets: rows are the two lower layers ``a,b``, columns the highest layer ``c`` (NaN where ``c ≤ b``).
    ``stats``: the interactions rows of that model and position."""
    if set_size == 2:
        m = np.full((n_layers, n_layers), np.nan)
        for layers, v in zip(stats.layers, stats[value], strict=True):
            a, b = layer_set(layers)
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
        a, b, c = sorted(layer_set(layers))
        m[index[(a, b)], c] = v
    return m, [f"{a},{b}" for a, b in pairs], [str(i) for i in range(n_layers)]


def set_heatmaps(interactions: pd.DataFrame, singles: pd.DataFrame, models: Sequence[str], set_size: int,
                 value: str, n_layers: int) -> bytes:
    """Heatmaps of ``value`` (``mean_joint`` or ``mean_interaction``) over the pairs or triplets of layers; rows:
    positions, columns: models. Each position (row) has its own diverging colour scale centred on 0, shared by
    the models and labelled on its colour bar (the last position's values are fixed by construction and far
    larger; one scale for both would hide the other positions)."""
    stats = interactions[interactions.set_size == set_size]
    positions = ordered(stats.position)
    models = present(models, stats.model)
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
    return png_bytes(fig)


def linearity_curves(table: pd.DataFrame, models: Sequence[str]) -> bytes:
    """How much of the patch effect the linear estimate explains, against the set size: R² (top row) and mean
    |nonlinearity| / mean |effect| (bottom row), each with its 95 % bootstrap CI over samples; one panel per
    position, one line per model (:func:`ivlens.patching.linearity.linearity_table`)."""
    positions = ordered(table.position)
    models = present(models, table.model)
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
    return png_bytes(fig)



# ----------------------------------------------------------------------------- section
LAST_CAVEAT = ("At the last position a layer set's patch equals the patch of its highest layer alone (the highest "
               "layer overwrites the only residual later layers read there), so the joint effect of a set is its "
               "highest layer's single effect and its interaction is minus the sum of the lower layers' singles: "
               "fixed by construction, not data. Only positions before the last (e.g. `first`) show how layers "
               "cooperate.")


def _first_is_last(run: Run) -> tuple[int, int] | None:
    """``(samples where the first patched position is the last, samples)`` of a patch run, from its rows."""
    if not run.has("patch"):
        return None
    try:
        rows = run.table("patch", columns=["model", "sample", "position", "pos_index"])
    except Exception:  # noqa: BLE001 - an older table without pos_index: no claim
        return None
    pos = rows.drop_duplicates().pivot_table(index=["model", "sample"], columns="position", values="pos_index")
    if "first" not in pos or "last" not in pos:
        return None
    return int((pos["first"] == pos["last"]).sum()), len(pos)


@runs_section("patch", having="single_layer", id="patching", title="IV localisation (layer patching)")
def patching_section(ctx: Context, runs: list[Run], s: h.Section) -> h.Section:
    """IV localisation.

    The instruction vector (the residual stream at the instruction's last token T_inst) is patched into a
    query-only prompt at one layer, at every pair and every triplet of layers, at the query's first and last
    positions. Effect: the change of the instructed label's logit against the unpatched query-only run.
    Interaction of a set: its joint effect minus the sum of its layers' single effects; a set is super- or
    subadditive when a paired t-test (Holm-corrected over the sets of one model and position) rejects
    additivity.
    """
    for run in runs:
        a = run.args
        singles = run.table("single_layer")
        inter = run.table("interactions") if run.has("interactions") else pd.DataFrame()
        n_layers = n_layers_of(run, singles, inter)
        s.add(h.heading(f"{run.manifest.get('task') or a.get('task', '')} · {a.get('subtask', '')} · "
                        f"{a.get('target', 'bare')} target · {a.get('samples', 'all')} samples ({run.rel})"))
        if a.get("target", "bare") == "bare":
            s.add(h.note("Bare target: the query alone (e.g. `big`); formatted target: `Adjective: big. Answer:`."))
        s.add(h.figure(single_layer_curves(singles, ctx.models),
                       "Single-layer patching: mean effect (± s.e.m. band) of patching the IV at one layer, per "
                       "position (panels), one line per model.", ctx.data(run, "single_layer")))
        coincide = _first_is_last(run)
        caveat = LAST_CAVEAT
        if coincide and coincide[0]:
            caveat += (f" Here the first position is also the last for {coincide[0]} of {coincide[1]} "
                       "(model, sample) prompts (a one-token query on the bare target), so the first position's "
                       "interactions are fixed by construction there too.")
        if not inter.empty:
            s.add(h.caveat(caveat))
        for size, name in ((2, "pairs"), (3, "triplets")):
            if inter.empty or not (inter.set_size == size).any():
                continue
            for value, what in (("mean_joint", "mean joint effect"),
                                ("mean_interaction", "mean interaction (joint − sum of singles)")):
                diag = " (diagonal: the single layer)" if size == 2 and value == "mean_joint" else ""
                layout = ("layer a × layer b" if size == 2
                          else "rows: the two lower layers a,b; columns: the highest layer c")
                s.add(h.figure(set_heatmaps(inter, singles, ctx.models, size, value, n_layers),
                               f"{name.capitalize()} of layers: {what}{diag}, {layout}; rows of panels: position, "
                               "columns: model; one colour scale per position, shared by the models (its bar "
                               "on the right), red positive, blue negative.",
                               ctx.data(run, "interactions", "single_layer")))
        if not inter.empty:
            verdicts = (inter.assign(verdict=inter.verdict.fillna("no test (n < 2 or no variance)"))
                        .groupby(["model", "position", "set_size", "verdict"], sort=False).size()
                        .unstack("verdict", fill_value=0).reset_index())
            everywhere = bool(coincide and coincide[0] == coincide[1])
            verdicts.insert(3, "interaction is", ["fixed by construction" if p == "last" or (p == "first" and everywhere)
                                                  else "data" for p in verdicts.position])
            s.add(h.table(verdicts, "Interaction verdicts: number of layer sets per verdict (Holm-corrected paired "
                                    "t-test of joint against additive, α = 0.05; sets additive by construction, "
                                    "where at most one layer's patch reaches the logits, e.g. the last layer at a "
                                    "non-final position, are counted apart and left out of the correction). Rows "
                                    "marked *fixed by construction* are not evidence about cooperation between "
                                    "layers (see the note above).".replace("*", ""), ctx.data(run, "interactions")))
        if run.has("additivity"):
            s.add(h.table(run.table("additivity"), "Additivity per set size: shares of the tested sets (n_tested: "
                                                   "a defined t-test, not additive by construction) that are "
                                                   "super- and subadditive, "
                                                   "of sets meeting the paper's per-sample criterion (joint ≥ "
                                                   "additive, sign test; no value where the corrected sign test "
                                                   "cannot reach significance with this many queries, as "
                                                   "paper_criterion_power says) and passing the paper's released test "
                                                   "(a t-test against 50 that passes for any data; shown for "
                                                   "comparison only).", ctx.data(run, "additivity")))
        if run.has("linearity"):
            _linearity(s, ctx, run)
        if run.has("strongest_sets"):
            top = run.table("strongest_sets")
            top = top.groupby(["model", "position"], sort=False).head(3)
            s.add(h.table(top, "The strongest layer sets (top 3 per model and position): mean effect, IA and "
                               "accuracy of the top-1 token (ia_top1, acc_top1) and accuracy within the label "
                               "space.", ctx.data(run, "strongest_sets")))
    return s


def _linearity(s: h.Section, ctx: Context, run: Run) -> None:
    """The linear estimate against the exact effect, per set size (and the screen, where the run had one)."""
    lin = run.table("linearity")
    effect = effect_label(lin.effect.iloc[0])
    s.add(h.figure(linearity_curves(lin, ctx.models),
                   "How much of each patch is linear: every row's first-order estimate Σ_l ∇_l · (IV_l − clean_l) "
                   "(gradients of the clean query-only run, attribution patching) against its exact effect "
                   f"({effect}), per set size. Top: the fraction of the effect's variance the estimate explains "
                   "(R², 1 = exact, 0 = no better than the mean); bottom: the mean |effect − estimate| against the "
                   "mean |effect|; bars: 95% bootstrap CIs over samples (the R² axis stops at −1). Singles are the control (one layer's own "
                   "curvature); a drop from singles to pairs and triplets is interaction beyond first order. At the "
                   "last position a set's exact effect is its highest layer's alone while the estimate sums every "
                   "layer, so there sets are non-linear by construction.", ctx.data(run, "linearity", "patch")))
    shown = lin[["model", "position", "set_size", "n_sets", "n_samples", "r2", "r2_lo", "r2_hi",
                 "rel_nonlinearity", "rel_nonlinearity_lo", "rel_nonlinearity_hi", "corr", "mean_abs_effect",
                 "mean_abs_nonlinearity"]]
    s.add(h.table(shown, "The linear estimate per set size: R², mean |nonlinearity| / mean |effect| and Pearson's "
                         "correlation of estimate and effect, with 95% bootstrap CIs over samples.",
                  ctx.data(run, "linearity")))
    if run.has("screen"):
        sc = run.table("screen", columns=["model", "position", "layers", "set_size", "run", "k"])
        multi = sc[sc.set_size >= 2].drop_duplicates(["model", "layers"])
        s.add(h.note(f"Screened run (--screen {int(sc.k.iloc[0])}): the exact engine ran the singles and "
                     f"{int(multi['run'].sum()):,} of {len(multi):,} multi-layer sets (each position's top "
                     f"{int(sc.k.iloc[0])} per set size by |mean linear estimate|), so the tables above hold only "
                     "those sets; the screen table ranks them all."))



patching_section.omitted = ("IV localisation", "patch")  # the page's note when no run draws it
