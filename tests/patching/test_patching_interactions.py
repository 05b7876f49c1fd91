"""Interaction statistics on synthetic tables with known structure."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ivlens.patching.interactions import (
    additivity_summary,
    benjamini_hochberg,
    correct,
    holm,
    interaction_stats,
    min_queries_for_sign_test,
    paired_tests,
    per_sample_interactions,
    rejection_levels,
    sign_test_floor,
    single_layer_effects,
    strongest_sets,
)


def _table(joint_fn, n_samples=30, n_layers=4, seed=0):
    """A patch table whose singles are random and whose sets' joint effect is ``joint_fn(layers, additive, rng)``."""
    rng = np.random.default_rng(seed)
    recs = []
    for s in range(n_samples):
        single = {i: rng.normal(1.0, 1.0) for i in range(n_layers)}
        sets = [c for k in (1, 2, 3) for c in itertools.combinations(range(n_layers), k)]
        for layers in sets:
            add = sum(single[i] for i in layers)
            e = single[layers[0]] if len(layers) == 1 else joint_fn(layers, add, rng)
            recs.append({"model": "m", "position": "last", "sample": s, "layers": ",".join(map(str, layers)),
                         "set_size": len(layers), "first_layer": layers[0], "delta_logit_vs_target": e,
                         "ia_top1": e > 0, "acc_top1": e > 2, "acc_space": e > 1})
    return pd.DataFrame(recs)


def test_per_sample_additive_is_sum_of_singles():
    t = _table(lambda layers, add, rng: add + 0.5)
    per = per_sample_interactions(t)
    assert len(per) == 30 * (6 + 4)
    assert np.allclose(per.interaction, 0.5)
    row = per[(per["sample"] == 3) & (per.layers == "0,2,3")].iloc[0]
    singles = t[(t["sample"] == 3) & (t.set_size == 1)].set_index("first_layer").delta_logit_vs_target
    assert row.additive == pytest.approx(singles[0] + singles[2] + singles[3])


def test_super_sub_and_additive_sets_are_told_apart():
    def joint(layers, add, rng):
        shift = {(0, 1): 2.0, (2, 3): -2.0}.get(layers, 0.0)
        return add + shift + rng.normal(0, 0.3)
    st = interaction_stats(_table(joint), correction="holm").set_index("layers")
    assert st.loc["0,1", "verdict"] == "superadditive"
    assert st.loc["2,3", "verdict"] == "subadditive"
    assert (st.drop(index=["0,1", "2,3"]).verdict == "n.s.").mean() >= 0.75
    assert st.loc["0,1", "paper_criterion_holds"] and not st.loc["2,3", "paper_criterion_holds"]
    # The released analysis "passes" every set, additive or not: that is its flaw.
    assert (st.p_paper_released < 1e-10).all()
    summ = additivity_summary(st.reset_index())
    pairs = summ[summ.set_size == 2].iloc[0]
    assert pairs.n_sets == 6 and pairs.frac_superadditive == pytest.approx(1 / 6)
    assert pairs.frac_subadditive == pytest.approx(1 / 6) and pairs.frac_paper_released_test == 1.0


def test_paired_tests_match_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=20), rng.normal(size=20)
    r = paired_tests(a, b)
    assert r["p_t"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert r["p_wilcoxon"] == pytest.approx(stats.wilcoxon(a - b).pvalue)
    k = int((a > b).sum())
    assert r["p_sign"] == pytest.approx(stats.binomtest(k, 20, 0.5).pvalue)
    assert r["criterion_rate"] == pytest.approx((a >= b).mean())



def test_an_undefined_test_gives_nan_not_one():
    """No variance of 0 differences, or a single sample: no test is possible, so p is NaN (before: 1.0, an
    undefined test claimed as "not significant"); constant nonzero differences are the t-test's limit, p = 0."""
    a = np.random.default_rng(1).normal(size=20)
    same = paired_tests(a, a)
    assert np.isnan(same["t"]) and np.isnan(same["p_t"])
    assert np.isnan(same["p_wilcoxon"]) and np.isnan(same["p_sign"])
    one = paired_tests(a[:1], a[:1] - 1.0)
    assert one["n"] == 1 and np.isnan(one["p_t"]) and np.isnan(one["sem_interaction"])
    shifted = paired_tests(np.arange(5.0) + 1.0, np.arange(5.0))  # every difference exactly 1
    assert shifted["p_t"] == 0.0 and shifted["t"] == np.inf


def test_sets_whose_interaction_is_zero_by_construction_are_not_tested():
    """Layer 3 (the last of 4) at a non-final position reaches no logit: its single effect and its contribution to
    any set are 0 by construction. A pair (x, 3) has one reaching layer, so its interaction is 0 by construction
    (up to float noise, which must not be tested): verdict "additive by construction", NaN tests, out of the Holm
    family. A triplet (x, y, 3) keeps two reaching layers and is tested like any other set."""
    rng = np.random.default_rng(0)
    recs = []
    for s in range(30):
        single = {i: rng.normal(1.0, 1.0) if i < 3 else 0.0 for i in range(4)}
        for layers in (c for k in (1, 2, 3) for c in itertools.combinations(range(4), k)):
            read = [i for i in layers if i < 3]
            add = sum(single[i] for i in read)
            e = (single[layers[0]] if len(layers) == 1 else add + 1e-12 * rng.normal() if len(read) <= 1
                 else add + 0.5 + rng.normal(0, 0.3))
            recs.append({"model": "m", "position": "first", "sample": s, "layers": ",".join(map(str, layers)),
                         "set_size": len(layers), "first_layer": layers[0], "delta_logit_vs_target": e,
                         "reaches_logits": layers[0] < 3, "ia_top1": e > 0, "acc_top1": e > 2, "acc_space": e > 1})
    t = pd.DataFrame(recs)
    st = interaction_stats(t, correction="holm").set_index("layers")
    fixed = ["0,3", "1,3", "2,3"]
    assert st.additive_by_construction.tolist() == [layers in fixed for layers in st.index]
    assert (st.loc[fixed, "verdict"] == "additive by construction").all()
    assert st.loc[fixed, ["p_t", "p_t_adj", "p_wilcoxon", "p_sign"]].isna().all().all()
    assert not st.loc[fixed, "paper_criterion_holds"].any() and not st.loc[fixed, "paper_criterion_reachable"].any()
    tested = st.drop(index=fixed)
    assert (tested.verdict == "superadditive").all()  # the triplets with layer 3 included
    assert tested.p_t_adj.tolist() == pytest.approx(holm(tested.p_t.to_numpy()).tolist())  # a family of 7, not 10
    summ = additivity_summary(st.reset_index()).set_index("set_size")
    assert summ.loc[2, "n_sets"] == 6 and summ.loc[2, "n_tested"] == 3
    assert summ.loc[2, "n_additive_by_construction"] == 3 and summ.loc[2, "frac_superadditive"] == 1.0
    assert summ.loc[3, "n_tested"] == 4 and summ.loc[3, "n_additive_by_construction"] == 0
    # a table without reaches_logits (an older run) makes no such claim
    assert not interaction_stats(t.drop(columns="reaches_logits")).additive_by_construction.any()


def test_corrections():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    assert holm(p).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert benjamini_hochberg(p).tolist() == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert (holm(p) >= benjamini_hochberg(p)).all()


def test_an_undefined_p_value_stays_undefined_and_out_of_the_family():
    """NaN (no test was possible) is not "not significant": it stays NaN and the others are adjusted as a family
    of the defined ones only (before, a NaN row was counted as p = 1 by its caller and came out 1.0)."""
    p = np.array([0.01, np.nan, 0.04, 0.03, 0.005])
    for method, alone in (("holm", holm), ("bh", benjamini_hochberg)):
        adj = correct(p, method)
        assert np.isnan(adj[1])
        assert adj[[0, 2, 3, 4]].tolist() == pytest.approx(alone(p[[0, 2, 3, 4]]).tolist())
    assert np.isnan(correct(np.array([np.nan, np.nan]), "holm")).all()
    with pytest.raises(ValueError, match="holm or bh"):
        correct(p, "bonferroni")


def test_the_paper_criterion_is_nan_where_the_sign_test_has_no_power():
    """Every set is superadditive on every query. At 8 queries the Holm-corrected sign test over the 10 sets of 4
    layers cannot go below 10 · 2⁻⁷ ≈ 0.078: the criterion cannot be met, so its fraction is NaN with "no power",
    not 0; at 30 queries it can, and is met by every set."""
    few = additivity_summary(interaction_stats(_table(lambda layers, add, rng: add + 5.0, n_samples=8)))
    assert few.frac_paper_criterion.isna().all() and (few.frac_superadditive == 1.0).all()
    assert (few.paper_criterion_power == "no power at n=8; needs n ≥ 9").all()
    many = additivity_summary(interaction_stats(_table(lambda layers, add, rng: add + 5.0, n_samples=30)))
    assert (many.frac_paper_criterion == 1.0).all() and (many.paper_criterion_power == "").all()
    # the floor in closed form: Holm needs m · 2 · 2^−n < α, BH only 2 · 2^−n < α
    assert min_queries_for_sign_test(435, "holm", 0.05) == 15 and min_queries_for_sign_test(435, "bh", 0.05) == 6
    assert sign_test_floor(np.array([1, 8])).tolist() == [1.0, 2 / 256]


@pytest.mark.parametrize("method", ["holm", "bh"])
def test_rejection_levels_agree_with_the_correction(method):
    """``p < level`` exactly where the corrected p is below α, on random families with some NaN and ties."""
    rng = np.random.default_rng(3)
    for _ in range(300):
        m = int(rng.integers(1, 12))
        p = rng.random(m) ** 3 * 0.2  # not rounded: a p exactly at a threshold is a float-rounding coin toss
        p[rng.integers(0, m)] = p[0]  # a tie
        p[rng.random(m) < 0.15] = np.nan
        level, adj = rejection_levels(p, method, 0.05), correct(p, method)
        ok = ~np.isnan(p)
        assert np.isnan(level[~ok]).all()
        assert ((p[ok] < level[ok]) == (adj[ok] < 0.05)).all()
    assert rejection_levels(np.array([0.001, 0.002, 0.2]), "holm", 0.05).tolist() == pytest.approx(
        [0.05 / 3, 0.05 / 2, 0.05 / 1])
    assert rejection_levels(np.array([0.001, 0.001, 0.2]), "holm", 0.05).tolist() == pytest.approx(
        [0.05 / 3, 0.05 / 3, 0.05 / 1])  # a tie: one level, the first rank's


def test_summaries_and_errors():
    t = _table(lambda layers, add, rng: add)
    s = single_layer_effects(t)
    assert list(s.layer) == [0, 1, 2, 3] and (s.n == 30).all()
    top = strongest_sets(t, k=3)
    assert len(top) == 3 and top["mean"].is_monotonic_decreasing
    with pytest.raises(ValueError, match="unknown effect"):
        per_sample_interactions(t, "nope")
    with pytest.raises(ValueError, match="unknown correction"):
        interaction_stats(t, correction="bonf")
