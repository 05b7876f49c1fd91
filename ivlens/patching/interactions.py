"""Are layers' IV patches additive? Joint effects of pairs and triplets against the sum of single-layer effects.

For a layer set ``S`` (``|S| ≥ 2``), sample ``i`` and an effect ``e`` (default: the change of the instructed
label's logit against the target-only run, ``delta_logit_vs_target``):

    joint_i       = e_i(S)
    additive_i    = Σ_{l ∈ S} e_i({l})
    interaction_i = joint_i − additive_i

Across samples (per model, position and set):

- a **paired t-test** and a **Wilcoxon signed-rank test** of ``joint`` against ``additive`` (two-sided), with the
  p-values corrected over all multi-layer sets of a (model, position) by Holm (family-wise) or
  Benjamini–Hochberg (false discovery rate). A set is *superadditive* when the corrected t-test p is below
  ``alpha`` and the mean interaction is positive, *subadditive* when it is negative;
- **the paper's criterion**: per sample, ``joint ≥ additive``; its rate is tested against 1/2 with an exact
  two-sided sign test (a binomial test on the samples where joint ≠ additive), corrected like the t-test. The
  exact test cannot go below ``2 · 2^−n`` at ``n`` samples, so with few samples and many sets no set can meet
  the criterion whatever the model does (8 queries, 435 pairs, Holm: the best corrected p is 435 · 2⁻⁷ ≈ 3.4).
  Such a set is marked ``paper_criterion_reachable = False`` and the summary reports no fraction (NaN) and
  "no power at n=8" instead of a 0 that only restates the sample size;
- for comparison, **the paper's released test**: a one-sample t-test of the 0/1 indicators against a mean of 50.
  Indicators lie in [0, 1], so their mean is never near 50 and the test "passes" (p ≈ 0) for any data; it is
  reported only to show that. See ``docs/patching.md``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ivlens.specs import Correction

from .reach import zero_by_construction

GROUP = ["model", "position"]


def holm(p: np.ndarray) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values ``[m]``: ``p̃_(k) = max_{j ≤ k} min(1, (m − j + 1) p_(j))`` in sorted order."""
    p = np.asarray(p, dtype=float)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p)
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values ``[m]``: ``p̃_(k) = min_{j ≥ k} min(1, m p_(j) / j)``
    (scipy's ``false_discovery_control``)."""
    from scipy import stats  # imported where used: a process that tests no interaction skips its import

    p = np.asarray(p, dtype=float)
    return p if len(p) == 0 else stats.false_discovery_control(p, method="bh")


def correct(p: np.ndarray, method: Correction) -> np.ndarray:
    """The project's one multiple-comparison adjustment: ``p: [m]`` → adjusted ``[m]`` by ``method`` (``holm`` or
    ``bh``). An undefined p-value (NaN: no test was possible) stays NaN and is left out of the family, so it
    neither counts towards ``m`` nor reads as "not significant"."""
    if method not in ("holm", "bh"):
        raise ValueError(f"unknown correction {method!r}; use holm or bh")
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    defined = ~np.isnan(p)
    out[defined] = holm(p[defined]) if method == "holm" else benjamini_hochberg(p[defined])
    return out


def rejection_levels(p: np.ndarray, method: Correction, alpha: float) -> np.ndarray:
    """The raw-p threshold at which :func:`correct` tests each hypothesis, given the others: ``p: [m]`` → ``[m]``
    with ``p_j < level_j`` exactly where ``correct(p, method)_j < alpha`` (NaN where ``p`` is NaN).

    Holm (step-down): the ``k``-th smallest p is tested at ``α / (m − k + 1)`` while every smaller one was
    rejected; with ``K`` rejections, every other hypothesis would need ``p < α / (m − K)``. Benjamini–Hochberg:
    with ``K`` rejections all rejected ones are tested at ``K α / m``, every other one would need
    ``p < (K + 1) α / m``. Tied p-values get one level (Holm: that of the first rank of their tie, which is
    what decides them all). A figure that draws a null band at these levels agrees with the verdicts."""
    if method not in ("holm", "bh"):
        raise ValueError(f"unknown correction {method!r}; use holm or bh")
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    defined = np.flatnonzero(~np.isnan(p))
    m = len(defined)
    if m == 0:
        return out
    order = defined[np.argsort(p[defined], kind="stable")]
    rejected = correct(p[order], method) < alpha  # [m] in sorted order: a prefix
    K = int(rejected.sum())
    k = np.searchsorted(p[order], p[order], side="left") + 1  # rank; tied p share the first rank of their tie
    if method == "holm":
        out[order] = np.where(rejected, alpha / (m - k + 1), alpha / max(m - K, 1))
    else:
        out[order] = np.where(rejected, K * alpha / m, min(K + 1, m) * alpha / m)
    return out


def paired_tests(joint: np.ndarray, additive: np.ndarray) -> dict[str, float]:
    """Tests of ``joint`` vs ``additive`` (both ``[n]``, paired by sample).

    Returns mean joint/additive/interaction, its standard error, the paired t-test (``t``, ``p_t``), the Wilcoxon
    signed-rank test (``p_wilcoxon``), the paper's criterion rate ``mean(joint ≥ additive)`` with its sign test
    ``p_sign``, and ``p_paper_released`` (a one-sample t-test of the 0/1 indicators against 50, as released with
    the paper; meaningless by construction).

    Where a test is undefined its p-value is NaN, never 1 (an undefined test is not "not significant";
    :func:`correct` leaves NaN out of the family and callers give such a row no verdict): the t-test with fewer
    than 2 samples or with every difference 0, the Wilcoxon and sign tests with no nonzero difference. Constant
    nonzero differences (no variance, every sample one way) are the t-test's limit: ``t = ±inf``, ``p_t = 0``.
    """
    from scipy import stats  # imported where used: a process that tests no interaction skips its import

    joint, additive = np.asarray(joint, float), np.asarray(additive, float)
    d = joint - additive
    n = len(d)
    out = {"n": n, "mean_joint": joint.mean(), "mean_additive": additive.mean(), "mean_interaction": d.mean(),
           "sem_interaction": d.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant differences: scipy warns and returns nan
        if n > 1 and np.ptp(d) > 0:
            t = stats.ttest_rel(joint, additive)
            out["t"], out["p_t"] = float(t.statistic), float(t.pvalue)
        else:
            out["t"] = np.nan if n < 2 or d.mean() == 0 else np.sign(d.mean()) * np.inf
            out["p_t"] = np.nan if n < 2 or d.mean() == 0 else 0.0
        nz = d[d != 0]
        out["p_wilcoxon"] = float(stats.wilcoxon(nz).pvalue) if len(nz) > 0 else np.nan
        ind = (joint >= additive).astype(float)
        out["criterion_rate"] = ind.mean()
        k, m = int((d > 0).sum()), int((d != 0).sum())
        out["p_sign"] = float(stats.binomtest(k, m, 0.5).pvalue) if m > 0 else np.nan
        released = stats.ttest_1samp(ind, 50.0) if n > 1 else None
        out["p_paper_released"] = float(released.pvalue) if released is not None and np.isfinite(
            released.pvalue) else (0.0 if n > 1 else np.nan)
    return out


def sign_test_floor(n: np.ndarray) -> np.ndarray:
    """The smallest p-value the two-sided exact sign test can give on ``n: [m]`` samples: every difference nonzero
    and of one sign, ``min(1, 2 · 2^−n)``."""
    return np.minimum(1.0, 2.0 * 0.5 ** np.asarray(n, dtype=float))


def min_queries_for_sign_test(m: int, correction: Correction, alpha: float, limit: int = 64) -> int:
    """The fewest samples at which a sign test could be significant after ``correction`` over a family of ``m``
    sets (every set at its floor, :func:`sign_test_floor`); ``limit + 1`` if not within ``limit``. At 435 pairs
    under Holm: 15."""
    for n in range(1, limit + 1):
        if correct(sign_test_floor(np.full(m, n)), correction).min() < alpha:
            return n
    return limit + 1


def per_sample_interactions(rows: pd.DataFrame, effect: str = "delta_logit_vs_target") -> pd.DataFrame:
    """Joint, additive and interaction per (model, position, sample, multi-layer set).

    ``rows``: the sweep's patch table. Sets whose singles are missing are dropped.
    ``additive_by_construction``: at most one layer of the set reaches the logits on that sample (the singles'
    ``reaches_logits``, :mod:`ivlens.patching.reach`), so its interaction is 0 by construction: a patch no later
    computation reads (e.g. the last layer at a non-final position) adds nothing to the joint run either, since it
    only overwrites a residual nothing reads. ``False`` for a table without ``reaches_logits`` (no claim).
    """
    if effect not in rows.columns:
        raise ValueError(f"unknown effect column {effect!r}; choose a metric column such as "
                         "delta_logit_vs_target, delta_prob_vs_target, delta_logit_diff_vs_target")
    singles = rows[rows.set_size == 1].set_index([*GROUP, "sample", "first_layer"])[effect]
    multi = rows[rows.set_size >= 2][[*GROUP, "sample", "layers", "set_size", effect]].copy()
    if multi.empty:
        return multi.assign(joint=[], additive=[], interaction=[], additive_by_construction=[])
    additive = np.zeros(len(multi))
    reaching = np.zeros(len(multi), dtype=int)  # layers of the set whose single patch reaches the logits
    ok = np.ones(len(multi), dtype=bool)
    lookup = singles.to_dict()
    reach = (rows[rows.set_size == 1].set_index([*GROUP, "sample", "first_layer"])["reaches_logits"].to_dict()
             if "reaches_logits" in rows else None)
    for j, (model, pos, sample, layers) in enumerate(zip(multi.model, multi.position, multi["sample"],
                                                         multi.layers, strict=True)):
        for layer in layers.split(","):
            v = lookup.get((model, pos, sample, int(layer)))
            if v is None:
                ok[j] = False
                break
            additive[j] += v
            reaching[j] += 1 if reach is None else bool(reach[(model, pos, sample, int(layer))])
    multi["joint"] = multi[effect].astype(float)
    multi["additive"] = additive
    multi["interaction"] = multi.joint - multi.additive
    multi["additive_by_construction"] = (reach is not None) & (reaching <= 1)
    return multi[ok].drop(columns=[effect]).reset_index(drop=True)


def interaction_stats(rows: pd.DataFrame, effect: str = "delta_logit_vs_target", correction: Correction = "holm",
                      alpha: float = 0.05) -> pd.DataFrame:
    """One row per (model, position, multi-layer set): :func:`paired_tests`, corrected p-values (over the sets of
    each model and position), a ``verdict``, ``additive_by_construction``, ``paper_criterion_holds``,
    ``paper_criterion_reachable`` (its corrected sign test could be significant at the set's ``n``) and
    ``paper_criterion_min_n`` (the fewest samples at which it could, for this family of sets).

    ``verdict``: superadditive / subadditive / n.s. where the t-test is defined; ``additive by construction``
    where the set's interaction is 0 by construction on every sample (:func:`per_sample_interactions`; its tests
    are NaN and it is left out of the correction's family: a 0 the model cannot help is no evidence of
    additivity); empty (None) where the t-test is undefined (fewer than 2 samples or no variance)."""
    per = per_sample_interactions(rows, effect)
    recs = []
    untestable = {"t": np.nan, "p_t": np.nan, "p_wilcoxon": np.nan, "p_sign": np.nan}
    for (model, pos, layers), g in per.groupby([*GROUP, "layers"], sort=False):
        fixed = bool(g.additive_by_construction.all())
        tests = paired_tests(g.joint.to_numpy(), g.additive.to_numpy())
        recs.append({"model": model, "position": pos, "layers": layers, "set_size": int(g.set_size.iloc[0]),
                     **tests, **(untestable if fixed else {}), "additive_by_construction": fixed})
    out = pd.DataFrame(recs)
    if out.empty:
        return out
    for col in ("p_t", "p_wilcoxon", "p_sign"):
        out[f"{col}_adj"] = np.nan
    for _, idx in out.groupby(GROUP, sort=False).groups.items():
        for col in ("p_t", "p_wilcoxon", "p_sign"):
            out.loc[idx, f"{col}_adj"] = correct(out.loc[idx, col].to_numpy(), correction)
    sig = out.p_t_adj < alpha
    verdict = pd.Series(np.where(sig & (out.mean_interaction > 0), "superadditive",
                                 np.where(sig & (out.mean_interaction < 0), "subadditive", "n.s.")), index=out.index)
    out["verdict"] = verdict.where(out.p_t.notna(), None).where(~out.additive_by_construction,
                                                               "additive by construction")
    out["paper_criterion_holds"] = (out.p_sign_adj < alpha) & (out.criterion_rate > 0.5)
    out["paper_criterion_reachable"] = False
    out["paper_criterion_min_n"] = 0
    for _, idx in out.groupby(GROUP, sort=False).groups.items():
        n = out.loc[idx, "n"].to_numpy(int)
        floor = np.where(out.loc[idx, "additive_by_construction"].to_numpy(bool), np.nan, sign_test_floor(n))
        out.loc[idx, "paper_criterion_reachable"] = correct(floor, correction) < alpha
        out.loc[idx, "paper_criterion_min_n"] = min_queries_for_sign_test(max(int((~np.isnan(floor)).sum()), 1),
                                                                         correction, alpha)
    out["effect"], out["correction"] = effect, correction
    return out


def additivity_summary(stats_table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, position, set size): the number of sets, of those tested (a defined t-test, not additive by
    construction) and of those additive by construction, and, over the tested sets, the fractions significantly
    super- and subadditive, meeting the paper's criterion (sign test), and "passing" the paper's released test,
    and the mean interaction (NaN where no set was tested).

    ``frac_paper_criterion`` is over the sets whose sign test could reach significance after the correction at
    their number of samples (``paper_criterion_reachable``), and NaN where none could: a corrected exact sign test
    has a floor (:func:`sign_test_floor`), so at 8 queries and 435 pairs (Holm) no set can meet the criterion and
    its 0 would be a fact about the test, not the model. ``paper_criterion_power`` then says so in words
    ("no power at n=8; needs n ≥ 15"), and is empty where the test has power.
    """
    if stats_table.empty:
        return stats_table
    keys = [*GROUP, "set_size"]
    return pd.DataFrame([dict(zip(keys, k, strict=True)) | _additivity_row(x)
                         for k, x in stats_table.groupby(keys, sort=False)])


def _additivity_row(x: pd.DataFrame) -> dict:
    reachable = x.paper_criterion_reachable.astype(bool)
    fixed = x.additive_by_construction.astype(bool) if "additive_by_construction" in x else x.n < 0
    tested = x[~fixed & x.p_t.notna()]
    no_power = "" if reachable.any() else (f"no power at n={int(x.n.max())}; needs n ≥ "
                                           f"{int(x.paper_criterion_min_n.max())}")
    return {
        "n_sets": len(x),
        "n_tested": len(tested),
        "n_additive_by_construction": int(fixed.sum()),
        "frac_superadditive": (tested.verdict == "superadditive").mean() if len(tested) else np.nan,
        "frac_subadditive": (tested.verdict == "subadditive").mean() if len(tested) else np.nan,
        "frac_paper_criterion": x.paper_criterion_holds[reachable].mean() if reachable.any() else np.nan,
        "frac_paper_released_test": (tested.p_paper_released < 0.05).mean() if len(tested) else np.nan,
        "mean_interaction": tested.mean_interaction.mean() if len(tested) else np.nan,
        "paper_criterion_power": no_power,
    }


def single_layer_effects(rows: pd.DataFrame, effect: str = "delta_logit_vs_target") -> pd.DataFrame:
    """Mean, standard error, ``ia_top1`` and accuracy of single-layer patches per (model, position, layer), and
    ``zero_by_construction``: no later computation reads the patch on any sample (its effect is 0 by construction,
    :mod:`ivlens.patching.reach`), so no summary may rank the layer."""
    s = rows[rows.set_size == 1]
    keys = [*GROUP, "first_layer"]
    g = s.groupby(keys, sort=False)
    out = g.agg(mean=(effect, "mean"), sem=(effect, "sem"), n=(effect, "size"), ia_top1=("ia_top1", "mean"),
                acc_top1=("acc_top1", "mean"), acc_space=("acc_space", "mean"))
    out["zero_by_construction"] = zero_by_construction(s, keys)
    out = out.reset_index().rename(columns={"first_layer": "layer"})
    out["effect"] = effect
    return out


def strongest_single_layer(singles: pd.DataFrame) -> pd.DataFrame:
    """Per (model, position) the row of :func:`single_layer_effects` with the largest mean effect, among layers
    whose effect is not 0 by construction (a patch no later computation reads cannot be the strongest: at a
    non-final position of the last layer it would win whenever every other layer lowers the effect)."""
    ranked = singles[~singles.zero_by_construction.astype(bool)] if "zero_by_construction" in singles else singles
    if ranked.empty:
        return ranked
    return ranked.loc[ranked.groupby(GROUP, sort=False)["mean"].idxmax()]


def strongest_sets(rows: pd.DataFrame, effect: str = "delta_logit_vs_target", k: int = 10) -> pd.DataFrame:
    """The ``k`` layer sets with the largest mean effect per (model, position), with ``ia_top1`` and accuracy after
    patching; sets whose effect is 0 by construction (no later computation reads the patch) are not ranked."""
    keys = [*GROUP, "layers", "set_size"]
    g = rows.groupby(keys, sort=False)
    t = g.agg(mean=(effect, "mean"), sem=(effect, "sem"), ia_top1=("ia_top1", "mean"),
              acc_top1=("acc_top1", "mean"), acc_space=("acc_space", "mean"))
    t = t[~zero_by_construction(rows, keys).reindex(t.index).to_numpy()].reset_index()
    t = t.sort_values([*GROUP, "mean"], ascending=[True, True, False])
    out = t.groupby(GROUP, sort=False).head(k).reset_index(drop=True)
    out["effect"] = effect
    return out
