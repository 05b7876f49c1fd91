"""Is the A-vs-B gap of ``trace --compare`` selectivity, and more than the base model's? Statistics on arrays.

Per sample, four exact path graphs of one query: instruction A and a rephrasing of it (A, A′), instruction B and a
rephrasing of it (B, B′), each traced at its own instruction's answer. Their six pairs (:data:`PAIRS`) are compared
layer by layer (weighted Jaccard of edge mass, :mod:`ivlens.tracing.compare`): ``sims: [sample, 6, layer]``.

- **gap** (per sample and layer): mean similarity of the two same-instruction pairs (A–A′, B–B′: *within*) minus
  the mean of the four different-instruction pairs (A–B, A–B′, A′–B, A′–B′: *between*). It is positive when the
  two instructions' graphs differ more than a rewording of one instruction changes its graph.
- **bootstrap CI** of the mean gap over samples (percentile, ``n_boot`` resamples of the samples, all layers
  resampled together), at the level ``1 − α/L``: Bonferroni-corrected over the ``L`` layers, so the ``L``
  intervals hold together with probability ``≥ 1 − α``.
- **permutation null.** If the instruction did not matter, the four graphs of a sample would be exchangeable, and
  the pairing "A with A′, B with B′" would be one of the three ways of splitting four graphs into two pairs
  (:data:`MATCHINGS`), each equally likely. The null distribution of the mean gap relabels every sample by one of
  its three splittings independently (all ``3^n`` relabellings when ``3^n ≤ n_perm``, else ``n_perm`` random ones);
  the one-sided p-value is the share of relabellings whose mean gap reaches the observed one. Summed over its
  three splittings a sample's gap is 0, so the null is centred at 0. p-values are corrected over layers (Holm by
  default, :func:`ivlens.patching.interactions.correct`, as patching does). The null's band (``null_lo``,
  ``null_hi``) is drawn at the level that same correction tests each layer at (``null_level``,
  :func:`null_band`), so a gap above the band is exactly one whose corrected p is below α.
- **verdict** ``selective`` where the corrected p is below α *and* the corrected CI lies above 0.
- **difference in differences** (a post-trained model against the base model, on the samples both traced):
  ``d_i = gap_post,i − gap_base,i``; its mean, its bootstrap CI (``1 − α/L``) and a two-sided sign-flip test (under
  "the two models' gaps come from one distribution" each ``d_i`` is as likely ``−d_i``), corrected over layers;
  ``more selective than base`` / ``less selective than base`` where the corrected p is below α and the CI
  excludes 0 on that side, else ``no more than base``.
- **behaviour.** Does the graph distance track what the model does? Per sample, ``1 − J(A, B)`` at the layer
  against the total variation distance between the model's next-token distributions under A and B (Spearman ρ),
  and against whether its greedy first token changes between A and B (point-biserial r, undefined when the
  answer changes in every sample or in none), each with a bootstrap CI at ``1 − α/L``; ``tracks behaviour``
  where ρ's CI lies above 0. The table gives the mean and spread of the total variation too: a model that
  answers each instruction with certainty has a total variation near 1 on every query, and ρ then ranks
  differences in its residual confidence, not in what it answers.

What a verdict does not say: the two instructions' graphs are traced at different answers, so "selective" cannot
tell an instruction that selects a circuit from two answer tokens reached by different paths. The base model
(which follows neither instruction) has the same answers and instructions: the difference in differences is the
control for that.

Every random draw comes from ``numpy.random.default_rng((seed, stream))`` with one stream per statistic, the same
for every model: the same seed gives the same table, and a model's row does not depend on the other models.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

#: the four graphs of a sample, in the order the pair indices use
GRAPHS = ("A", "A′", "B", "B′")
#: the six pairs of the four graphs, in the order of ``sims``' second axis
PAIRS = ((0, 1), (2, 3), (0, 2), (0, 3), (1, 2), (1, 3))
PAIR_NAMES = tuple(f"{GRAPHS[i]}–{GRAPHS[j]}" for i, j in PAIRS)
#: the three ways of splitting the four graphs into two pairs, as indices into PAIRS; the first is the real one
MATCHINGS = ((0, 1), (2, 5), (3, 4))
#: the real matching's pairs (same instruction) and the others (different instructions)
WITHIN, BETWEEN = (0, 1), (2, 3, 4, 5)
#: the index into PAIRS of the instructions as written (A vs B)
AB = 2
ALPHA = 0.05
N_BOOT = 4000
N_PERM = 10000
_STREAM = {"gap": 1, "null": 2, "did": 3, "flip": 4, "behaviour": 5}


@dataclass(frozen=True)
class ModelQuartets:
    """One model's samples: ``samples: [n]`` their indices in the task, ``sims: [n, 6, layer]`` the weighted
    Jaccard of each pair of :data:`PAIRS` per layer, ``tv: [n]`` the total variation distance between the model's
    next-token distributions under A and B, ``changed: [n]`` whether its greedy first token differs."""

    samples: np.ndarray
    sims: np.ndarray
    tv: np.ndarray
    changed: np.ndarray

    def __post_init__(self):
        n = len(self.samples)
        if self.sims.ndim != 3 or self.sims.shape[:2] != (n, len(PAIRS)) or self.tv.shape != (n,) \
                or self.changed.shape != (n,):
            raise ValueError(f"quartet arrays disagree: samples {n}, sims {self.sims.shape}, tv {self.tv.shape}, "
                             f"changed {self.changed.shape}")

    @property
    def n_layers(self) -> int:
        return self.sims.shape[2]


def matching_gaps(sims: np.ndarray) -> np.ndarray:
    """``[n, 3, layer]``: the gap of each sample under each of the three matchings (index 0: the real one):
    mean similarity of the matching's two pairs minus the mean of the other four. ``sims: [n, 6, layer]``."""
    total = sims.sum(1)  # [n, layer]
    inside = np.stack([sims[:, list(m)].sum(1) for m in MATCHINGS], 1)  # [n, 3, layer]
    return inside / 2 - (total[:, None] - inside) / 4


def within_between(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``([n, layer], [n, layer])``: mean similarity of the same-instruction pairs and of the others."""
    return sims[:, list(WITHIN)].mean(1), sims[:, list(BETWEEN)].mean(1)


def ci_level(alpha: float, n_layers: int) -> float:
    """The Bonferroni-corrected confidence level ``1 − α/L`` of intervals that hold together over ``L`` layers."""
    return 1 - alpha / max(n_layers, 1)


def bootstrap_mean_ci(x: np.ndarray, level: float, rng: np.random.Generator, n_boot: int = N_BOOT
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean over samples: ``x: [n, k]`` → ``(lo [k], hi [k])`` (NaN with
    fewer than two samples). The rows are resampled together, so paired columns stay paired."""
    n, k = x.shape
    if n < 2:
        return np.full(k, np.nan), np.full(k, np.nan)
    means = x[rng.integers(0, n, size=(n_boot, n))].mean(1)  # [n_boot, k]
    q = (1 - level) / 2
    return np.quantile(means, q, axis=0), np.quantile(means, 1 - q, axis=0)


def _relabellings(n: int, k: int, n_perm: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """``([r, n], exact)``: every assignment of one of ``k`` labels to each of ``n`` samples when there are at most
    ``n_perm`` of them (``exact``), else ``n_perm`` random ones."""
    if k ** n <= n_perm:
        return np.array(list(itertools.product(range(k), repeat=n)), dtype=np.int64).reshape(-1, n), True
    return rng.integers(0, k, size=(n_perm, n)), False


def _p_value(null: np.ndarray, observed: np.ndarray, exact: bool) -> np.ndarray:
    """Share of ``null: [r, k]`` at or above ``observed: [k]`` (with a tolerance for ties of floating sums); a random
    null counts the observed labelling once, ``(1 + #) / (1 + r)``."""
    hits = (null >= observed - 1e-12 * np.maximum(1.0, np.abs(observed))).sum(0)
    return hits / len(null) if exact else (1 + hits) / (1 + len(null))


def permutation_null(gaps3: np.ndarray, rng: np.random.Generator, n_perm: int = N_PERM
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``gaps3: [n, 3, layer]`` (:func:`matching_gaps`) → ``(p [layer], null [r, layer])``: the one-sided p-value of
    the observed mean gap (matching 0) against the mean gaps of relabelled samples, and that null distribution."""
    n, _, L = gaps3.shape
    if n == 0:
        return np.ones(L), np.zeros((1, L))
    labels, exact = _relabellings(n, len(MATCHINGS), n_perm, rng)
    onehot = np.eye(len(MATCHINGS))[labels]  # [r, n, 3]
    null = np.einsum("rnk,nkl->rl", onehot, gaps3) / n  # [r, layer]: each relabelling's mean gap
    return _p_value(null, gaps3[:, 0].mean(0), exact), null


def sign_flip_test(d: np.ndarray, rng: np.random.Generator, n_perm: int = N_PERM) -> np.ndarray:
    """Two-sided sign-flip test of mean 0 for paired differences ``d: [n, layer]`` → ``p [layer]`` (1 without
    samples or where every difference is 0)."""
    n, L = d.shape
    if n == 0:
        return np.ones(L)
    labels, exact = _relabellings(n, 2, n_perm, rng)
    null = np.abs(((1 - 2 * labels)[:, :, None] * d[None]).mean(1))  # [r, layer]
    p = _p_value(null, np.abs(d.mean(0)), exact)
    return np.where(np.all(d == 0, axis=0), 1.0, p)


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each column pair of ``x, y: [..., n]`` along the last axis (NaN where either is constant)."""
    xc, yc = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    den = np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-12, (xc * yc).sum(-1) / np.where(den > 0, den, 1), np.nan)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank), as Spearman's ρ needs."""
    from scipy.stats import rankdata

    return rankdata(x, axis=-1)


def correlation_ci(x: np.ndarray, y: np.ndarray, level: float, rng: np.random.Generator, n_boot: int = N_BOOT,
                   rank: bool = False) -> tuple[float, float, float]:
    """``(r, lo, hi)``: Pearson r of ``x, y: [n]`` (``rank``: Spearman ρ) and its percentile bootstrap interval
    (resamples where either is constant are left out); NaN where undefined."""
    n = len(x)
    r = float(_pearson(_ranks(x) if rank else x, _ranks(y) if rank else y)) if n >= 3 else math.nan
    if not np.isfinite(r):
        return math.nan, math.nan, math.nan
    idx = rng.integers(0, n, size=(n_boot, n))
    bx, by = x[idx], y[idx]
    rs = _pearson(_ranks(bx) if rank else bx, _ranks(by) if rank else by)
    rs = rs[np.isfinite(rs)]
    if len(rs) < n_boot / 2:  # mostly degenerate resamples: no interval worth the name
        return r, math.nan, math.nan
    q = (1 - level) / 2
    return r, float(np.quantile(rs, q)), float(np.quantile(rs, 1 - q))


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng((int(seed), _STREAM[stream]))


def null_band(null: np.ndarray, p: np.ndarray, correction: str, alpha: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The permutation null's band per layer, drawn at the level the verdict's correction tests that layer at:
    ``null: [r, layer]`` (:func:`permutation_null`), ``p: [layer]`` its raw p-values → ``(level, lo, hi)``, each
    ``[layer]``: ``level`` from :func:`ivlens.patching.interactions.rejection_levels` (Holm: ``α / (L − k + 1)``
    for the ``k``-th smallest p while the smaller ones are rejected), ``hi`` the null's ``1 − level`` quantile
    (a mean gap above it has corrected p < α, up to the null's discreteness: the one-sided test's edge) and
    ``lo`` its ``level`` quantile (the band's other side, for the eye)."""
    from ivlens.patching.interactions import rejection_levels

    level = rejection_levels(p, correction, alpha)  # [layer]
    lo = np.array([np.quantile(null[:, j], level[j]) for j in range(null.shape[1])])
    hi = np.array([np.quantile(null[:, j], 1 - level[j]) for j in range(null.shape[1])])
    return level, lo, hi


def _correct(p: np.ndarray, correction: str) -> np.ndarray:
    from ivlens.patching.interactions import correct

    return correct(p, correction)


def selectivity_rows(models: Mapping[str, ModelQuartets], base: str | None = None, *, alpha: float = ALPHA,
                     correction: str = "holm", seed: int = 0, n_boot: int = N_BOOT, n_perm: int = N_PERM
                     ) -> list[dict]:
    """One row per model × layer: the gap with its CI and permutation p (raw and corrected over layers) and
    verdict; with a ``base`` model, the difference in differences against it on the samples both traced; the
    behaviour correlations. See the module docstring for every statistic."""
    if base is not None and base not in models:
        raise ValueError(f"base model {base!r} is not one of {list(models)}")
    rows = []
    for name, q in models.items():
        L, n = q.n_layers, len(q.samples)
        level = ci_level(alpha, L)
        within, between = within_between(q.sims)
        g3 = matching_gaps(q.sims)
        gap = g3[:, 0]  # [n, layer]
        lo, hi = bootstrap_mean_ci(gap, level, _rng(seed, "gap"), n_boot)
        p, null = permutation_null(g3, _rng(seed, "null"), n_perm)
        p_adj = _correct(p, correction)
        null_level, null_lo, null_hi = null_band(null, p, correction, alpha)
        did = _did(q, models[base], alpha, level, seed, n_boot, n_perm, correction) if base not in (None, name) \
            else None
        distance = 1 - q.sims[:, AB]  # [n, layer]
        change_rate = float(q.changed.mean()) if n else math.nan
        tv_mean, tv_sd = _mean(q.tv), float(q.tv.std()) if n else math.nan
        for layer in range(L):
            selective = bool(p_adj[layer] < alpha and lo[layer] > 0)
            rho = correlation_ci(distance[:, layer], q.tv, level, _rng(seed, "behaviour"), n_boot, rank=True)
            pb = correlation_ci(distance[:, layer], q.changed.astype(float), level, _rng(seed, "behaviour"), n_boot)
            row = {"model": name, "layer": layer, "n": n, "within": _mean(within[:, layer]),
                   "between": _mean(between[:, layer]), "gap": _mean(gap[:, layer]), "gap_lo": float(lo[layer]),
                   "gap_hi": float(hi[layer]), "null_lo": float(null_lo[layer]), "null_hi": float(null_hi[layer]),
                   "null_level": float(null_level[layer]),
                   "p_perm": float(p[layer]), "p_perm_adj": float(p_adj[layer]), "selective": selective,
                   "verdict": "selective" if selective else "not selective",
                   "base": base, "is_base": name == base}
            row.update(did[layer] if did is not None else {
                "n_paired": 0, "did": math.nan, "did_lo": math.nan, "did_hi": math.nan, "p_did": math.nan,
                "p_did_adj": math.nan, "did_verdict": "base model" if name == base else "no base model"})
            row.update({"answer_change_rate": change_rate, "tv_mean": tv_mean, "tv_sd": tv_sd, "behaviour_rho": rho[0], "behaviour_rho_lo": rho[1],
                        "behaviour_rho_hi": rho[2], "point_biserial": pb[0], "point_biserial_lo": pb[1],
                        "point_biserial_hi": pb[2], "tracks_behaviour": bool(np.isfinite(rho[1]) and rho[1] > 0),
                        "ci_level": level, "alpha": alpha, "correction": correction, "n_boot": n_boot,
                        "n_perm": n_perm, "seed": seed})
            rows.append(row)
    return rows


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else math.nan


def _did(post: ModelQuartets, base: ModelQuartets, alpha: float, level: float, seed: int, n_boot: int,
         n_perm: int, correction: str) -> list[dict]:
    """Per layer: the difference in differences ``gap_post − gap_base`` on the samples both models traced."""
    common, ip, ib = np.intersect1d(post.samples, base.samples, return_indices=True)
    L = post.n_layers
    reason = (f"the base model has {base.n_layers} layers, this one {L}" if base.n_layers != L else
              f"{len(common)} sample{'' if len(common) == 1 else 's'} in common with the base model"
              if len(common) < 2 else None)
    if reason is not None:
        return [{"n_paired": len(common) if base.n_layers == L else 0, "did": math.nan, "did_lo": math.nan,
                 "did_hi": math.nan, "p_did": math.nan, "p_did_adj": math.nan,
                 "did_verdict": f"not comparable ({reason})"} for _ in range(L)]
    d = matching_gaps(post.sims[ip])[:, 0] - matching_gaps(base.sims[ib])[:, 0]  # [n_paired, layer]
    lo, hi = bootstrap_mean_ci(d, level, _rng(seed, "did"), n_boot)
    p = sign_flip_test(d, _rng(seed, "flip"), n_perm)
    p_adj = _correct(p, correction)
    out = []
    for layer in range(L):
        more = p_adj[layer] < alpha and lo[layer] > 0
        less = p_adj[layer] < alpha and hi[layer] < 0
        out.append({"n_paired": len(common), "did": _mean(d[:, layer]), "did_lo": float(lo[layer]),
                    "did_hi": float(hi[layer]), "p_did": float(p[layer]), "p_did_adj": float(p_adj[layer]),
                    "did_verdict": "more selective than base" if more else "less selective than base" if less
                    else "no more than base"})
    return out


def layer_ranges(layers: list[int]) -> str:
    """``[0, 1, 2, 4]`` → ``"0–2, 4"``."""
    out, start = [], None
    for i, x in enumerate(layers):
        if start is None:
            start = x
        if i + 1 == len(layers) or layers[i + 1] != x + 1:
            out.append(str(start) if start == x else f"{start}–{x}")
            start = None
    return ", ".join(out)


def verdict_sentences(rows: list[dict]) -> dict[str, str]:
    """``{model: one sentence}`` saying what the table supports, generated from its verdicts (for the printed
    summary and the report)."""
    out = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = sorted((r for r in rows if r["model"] == name), key=lambda r: r["layer"])
        first = mine[0]
        sel = [r["layer"] for r in mine if r["selective"]]
        gaps = ", ".join(f"{r['gap']:+.2f}" for r in mine)
        s = (f"{name}{' (base model)' if first['is_base'] else ''}: gap (same instruction − different) by layer "
             f"{gaps}; selective at " + (f"layer{'s' if len(sel) > 1 else ''} {layer_ranges(sel)}" if sel else "no layer")
             + f" of {len(mine)} ({first['correction']}-corrected permutation p < {first['alpha']:g} and "
             f"{first['ci_level']:.1%} CI above 0, n = {first['n']})")
        if not first["is_base"] and first["base"] is not None and first["n_paired"] >= 2:
            parts = []
            for verdict in ("more selective than", "less selective than", "no more than"):
                layers = [r["layer"] for r in mine if r["did_verdict"] == f"{verdict} base"]
                if layers:
                    parts.append(f"{verdict} {first['base']} at {layer_ranges(layers)}")
            dids = ", ".join(f"{r['did']:+.2f}" for r in mine)
            s += f"; difference in differences {dids} (n = {first['n_paired']}): " + ", ".join(parts)
        elif not first["is_base"] and first["base"] is not None:
            s += f"; against {first['base']}: {first['did_verdict']}"
        tracks = [r["layer"] for r in mine if r["tracks_behaviour"]]
        s += (f"; the greedy answer changes between A and B in {first['answer_change_rate']:.0%} of queries (total "
              f"variation between the next-token distributions {first['tv_mean']:.2f} ± {first['tv_sd']:.2f}), and "
              "the A-vs-B graph distance tracks that total variation at "
              + (f"layer{'s' if len(tracks) > 1 else ''} {layer_ranges(tracks)}" if tracks else "no layer") + ".")
        out[name] = s
    return out
