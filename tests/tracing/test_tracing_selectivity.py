"""Selectivity statistics of ``trace --compare`` on synthetic similarities with known answers: no gap is never
selective, a large one is, the permutation null is a real null (uniform p, exact against brute force), the
difference in differences of identical models is 0, and verdicts follow the corrected p and CI."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from ivlens.patching.interactions import holm
from ivlens.tracing.selectivity import (
    MATCHINGS,
    PAIRS,
    ModelQuartets,
    bootstrap_mean_ci,
    layer_ranges,
    matching_gaps,
    permutation_null,
    selectivity_rows,
    sign_flip_test,
    verdict_sentences,
)


def synthetic(n: int, n_layers: int, within: float, between: float, noise: float = 0.05, seed: int = 0,
              tv: np.ndarray | None = None, changed: np.ndarray | None = None) -> ModelQuartets:
    """``n`` samples whose same-instruction pairs (A–A′, B–B′) have similarity ``within`` and whose other four
    pairs ``between``, plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    mean = np.array([within if k < 2 else between for k in range(len(PAIRS))])
    sims = np.clip(mean[None, :, None] + noise * rng.standard_normal((n, len(PAIRS), n_layers)), 0, 1)
    return ModelQuartets(np.arange(n), sims, rng.random(n) if tv is None else tv,
                         np.ones(n, bool) if changed is None else changed)


def test_matching_gaps_by_hand():
    sims = np.array([[0.9, 0.7, 0.2, 0.3, 0.4, 0.5]])[:, :, None]  # one sample, one layer
    g = matching_gaps(sims)[0, :, 0]
    assert g[0] == pytest.approx((0.9 + 0.7) / 2 - (0.2 + 0.3 + 0.4 + 0.5) / 4)
    assert g[1] == pytest.approx((0.2 + 0.5) / 2 - (0.9 + 0.7 + 0.3 + 0.4) / 4)
    assert g[2] == pytest.approx((0.3 + 0.4) / 2 - (0.9 + 0.7 + 0.2 + 0.5) / 4)
    assert g.sum() == pytest.approx(0.0)  # the null is centred at 0
    # the three matchings split the four graphs into two pairs each, and every pair is in exactly one
    assert sorted(k for m in MATCHINGS for k in m) == list(range(6))
    for m in MATCHINGS:
        assert sorted(PAIRS[m[0]] + PAIRS[m[1]]) == [0, 1, 2, 3]


def test_the_permutation_p_equals_brute_force_enumeration():
    """The exact null of 3 samples is the mean gap under each of the 27 relabellings (written out with loops)."""
    q = synthetic(3, 2, 0.6, 0.5, noise=0.1, seed=4)
    g3 = matching_gaps(q.sims)
    p, null = permutation_null(g3, np.random.default_rng(0))
    observed = g3[:, 0].mean(0)
    brute = [np.mean([g3[i, m] for i, m in enumerate(labels)], axis=0)
             for labels in itertools.product(range(3), repeat=3)]
    assert null.shape == (27, 2)
    np.testing.assert_allclose(np.sort(null, 0), np.sort(np.array(brute), 0))
    np.testing.assert_allclose(p, [np.mean([b[k] >= observed[k] - 1e-12 for b in brute]) for k in range(2)])


def test_permutation_p_is_uniform_under_the_null():
    """Four exchangeable graphs per sample (all six pairs drawn alike): p is uniform, 5% of runs below 0.05."""
    ps = []
    for rep in range(300):
        q = synthetic(15, 1, 0.5, 0.5, noise=0.1, seed=rep)
        p, _ = permutation_null(matching_gaps(q.sims), np.random.default_rng(rep), n_perm=400)
        ps.append(p[0])
    ps = np.array(ps)
    assert stats.kstest(ps, "uniform").pvalue > 0.01, np.histogram(ps, bins=10, range=(0, 1))[0]
    assert 0.01 <= (ps < 0.05).mean() <= 0.10


def test_no_gap_is_not_selective_and_a_large_gap_is():
    none = selectivity_rows({"m": synthetic(20, 4, 0.5, 0.5, seed=1)})
    assert [r["verdict"] for r in none] == ["not selective"] * 4
    assert all(r["gap_lo"] <= 0 <= r["gap_hi"] for r in none)
    large = selectivity_rows({"m": synthetic(20, 4, 0.8, 0.4, seed=1)})
    assert [r["verdict"] for r in large] == ["selective"] * 4
    for r in large:
        assert r["gap_lo"] <= 0.4 <= r["gap_hi"] and r["gap"] == pytest.approx(0.4, abs=0.03)
        assert r["p_perm_adj"] < 0.05 and r["null_lo"] < 0 < r["null_hi"] and r["null_hi"] < r["gap_lo"]
    assert np.allclose([r["p_perm_adj"] for r in large], holm(np.array([r["p_perm"] for r in large])))


def test_two_samples_can_never_be_called_selective():
    """With two samples there are 9 relabellings, so p ≥ 1/9 however large the gap."""
    rows = selectivity_rows({"m": synthetic(2, 3, 0.95, 0.05, noise=0.0)})
    assert all(r["p_perm"] >= 1 / 9 - 1e-12 and not r["selective"] for r in rows)


def test_the_ci_is_corrected_over_layers():
    x = np.random.default_rng(0).standard_normal((30, 1))
    lo95, hi95 = bootstrap_mean_ci(x, 0.95, np.random.default_rng(1))
    lo99, hi99 = bootstrap_mean_ci(x, 1 - 0.05 / 6, np.random.default_rng(1))
    assert lo99 < lo95 < hi95 < hi99
    rows = selectivity_rows({"m": synthetic(10, 6, 0.6, 0.5)})
    assert rows[0]["ci_level"] == pytest.approx(1 - 0.05 / 6)
    assert np.isnan(bootstrap_mean_ci(x[:1], 0.95, np.random.default_rng(0))[0]).all()


def test_the_null_band_is_drawn_at_the_verdicts_correction():
    """Five layers with a large gap and one (layer 5) with a small one whose Holm-corrected p is below α only
    because Holm tests the last hypothesis at α / 1. The band is drawn at each layer's Holm level, so "above the
    band" and "corrected p < α" agree on every layer; the old Bonferroni band (two-sided, 1 − α/2L) put layer 5's
    gap inside the band while its corrected p was 0.03."""
    n, L = 20, 6
    rng = np.random.default_rng(0)
    gaps = np.array([0.3, 0.3, 0.3, 0.3, 0.3, 0.07])
    sims = np.empty((n, len(PAIRS), L))
    for layer in range(L):
        mean = np.array([0.5 + gaps[layer] if k < 2 else 0.5 for k in range(len(PAIRS))])
        sims[:, :, layer] = np.clip(mean[None, :] + 0.1 * rng.standard_normal((n, len(PAIRS))), 0, 1)
    rows = selectivity_rows({"m": ModelQuartets(np.arange(n), sims, rng.random(n), np.ones(n, bool))})
    above = np.array([r["gap"] > r["null_hi"] for r in rows])
    assert above.tolist() == [r["p_perm_adj"] < 0.05 for r in rows]
    assert above[5] and rows[5]["p_perm_adj"] == pytest.approx(rows[5]["p_perm"]) and rows[5]["p_perm"] < 0.05
    assert rows[5]["null_level"] == pytest.approx(0.05)  # Holm's last step, after five rejections
    # the five strong layers tie at the smallest p the null can give: one level, Holm's first step α / 6
    assert len({r["p_perm"] for r in rows[:5]}) == 1
    assert [r["null_level"] for r in rows[:5]] == pytest.approx([0.05 / 6] * 5)
    assert all(r["null_lo"] < 0 < r["null_hi"] for r in rows)


def test_difference_in_differences_of_identical_models_is_zero():
    q = synthetic(20, 3, 0.8, 0.4, seed=2)
    rows = selectivity_rows({"base": q, "sft": q}, base="base")
    sft = [r for r in rows if r["model"] == "sft"]
    assert all(r["did"] == 0 and r["did_lo"] <= 0 <= r["did_hi"] and r["p_did"] == 1 for r in sft)
    assert [r["did_verdict"] for r in sft] == ["no more than base"] * 3
    base = [r for r in rows if r["model"] == "base"]
    assert all(r["is_base"] and r["did_verdict"] == "base model" for r in base)
    # the same seed draws the same resamples for every model: identical models get identical rows
    keep = ("gap", "gap_lo", "gap_hi", "p_perm", "null_lo", "null_hi", "behaviour_rho_lo")
    assert [{k: r[k] for k in keep} for r in sft] == [{k: r[k] for k in keep} for r in base]


def test_more_selective_than_base_only_where_the_data_say_so():
    base = synthetic(20, 2, 0.7, 0.4, seed=3)
    same = synthetic(20, 2, 0.7, 0.4, seed=5)  # the same gap, other noise
    more = synthetic(20, 2, 0.9, 0.2, seed=6)
    rows = selectivity_rows({"base": base, "same": same, "more": more}, base="base")
    verdicts = {(r["model"], r["layer"]): r["did_verdict"] for r in rows}
    assert verdicts[("same", 0)] == verdicts[("same", 1)] == "no more than base"
    assert verdicts[("more", 0)] == verdicts[("more", 1)] == "more selective than base"
    less = selectivity_rows({"base": more, "post": base}, base="base")
    assert {r["did_verdict"] for r in less if r["model"] == "post"} == {"less selective than base"}
    # all three are selective: the gap alone does not tell post-training from the base model
    assert all(r["selective"] for r in rows)
    sentences = verdict_sentences(rows)
    assert "no more than base at 0–1" in sentences["same"] and "more selective than base at 0–1" in sentences["more"]


def test_did_pairs_the_samples_both_models_traced():
    base = synthetic(20, 2, 0.7, 0.4, seed=3)
    post = ModelQuartets(base.samples[5:], base.sims[5:], base.tv[5:], base.changed[5:])
    rows = selectivity_rows({"base": base, "post": post}, base="base")
    assert {r["n_paired"] for r in rows if r["model"] == "post"} == {15}
    assert {r["did"] for r in rows if r["model"] == "post"} == {0.0}
    apart = ModelQuartets(base.samples + 100, base.sims, base.tv, base.changed)  # no sample in common
    rows = selectivity_rows({"base": base, "apart": apart}, base="base")
    assert {r["did_verdict"] for r in rows if r["model"] == "apart"} == {
        "not comparable (0 samples in common with the base model)"}
    assert "against base: not comparable" in verdict_sentences(rows)["apart"]


def test_a_model_row_does_not_depend_on_the_other_models():
    a = synthetic(12, 2, 0.7, 0.5, seed=7)
    alone = selectivity_rows({"a": a}, seed=3)
    with_other = [r for r in selectivity_rows({"b": synthetic(12, 2, 0.5, 0.5), "a": a}, seed=3) if r["model"] == "a"]
    assert alone == with_other
    assert alone != selectivity_rows({"a": a}, seed=4)


def test_sign_flip_test():
    assert sign_flip_test(np.zeros((10, 2)), np.random.default_rng(0)).tolist() == [1.0, 1.0]
    d = np.full((10, 1), 0.3)  # every sample the same sign: p = 2 / 2^10 exactly
    assert sign_flip_test(d, np.random.default_rng(0))[0] == pytest.approx(2 / 2 ** 10)


def test_behaviour_correlations():
    n = 20
    q = synthetic(n, 2, 0.7, 0.4, seed=8)
    distance = 1 - q.sims[:, 2, 0]  # A vs B at layer 0
    tracks = ModelQuartets(q.samples, q.sims, distance ** 2, distance > np.median(distance))
    rows = selectivity_rows({"m": tracks})
    assert rows[0]["behaviour_rho"] == pytest.approx(1.0) and rows[0]["tracks_behaviour"]
    assert rows[0]["point_biserial"] > 0.5
    r_pb = stats.pointbiserialr(tracks.changed, distance).statistic
    assert rows[0]["point_biserial"] == pytest.approx(r_pb)
    rho = stats.spearmanr(1 - q.sims[:, 2, 1], tracks.tv).statistic
    assert rows[1]["behaviour_rho"] == pytest.approx(rho)
    constant = selectivity_rows({"m": synthetic(n, 1, 0.7, 0.4, changed=np.ones(n, bool))})
    assert np.isnan(constant[0]["point_biserial"]) and constant[0]["answer_change_rate"] == 1.0


def test_layer_ranges():
    assert layer_ranges([0, 1, 2, 4, 6, 7]) == "0–2, 4, 6–7" and layer_ranges([]) == ""


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="quartet arrays disagree"):
        ModelQuartets(np.arange(3), np.zeros((3, 5, 2)), np.zeros(3), np.zeros(3, bool))
    with pytest.raises(ValueError, match="base model 'x' is not one of"):
        selectivity_rows({"m": synthetic(3, 1, 0.5, 0.5)}, base="x")
