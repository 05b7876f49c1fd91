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
    holm,
    interaction_stats,
    paired_tests,
    per_sample_interactions,
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
                         "ia": e > 0, "acc_top1": e > 2, "acc_space": e > 1})
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
    same = paired_tests(a, a)
    assert same["p_t"] == 1.0 and same["p_wilcoxon"] == 1.0 and same["p_sign"] == 1.0


def test_corrections():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    assert holm(p).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert benjamini_hochberg(p).tolist() == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert (holm(p) >= benjamini_hochberg(p)).all()


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
