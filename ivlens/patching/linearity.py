"""How much of each patch the linear estimate explains, per set size: the paper's non-linearity, measured.

For the rows of one (model, position, set size) with effects ``e`` and linear estimates ``ê``
(:mod:`ivlens.patching.linear`; ``nonlinearity = e − ê``):

- ``r2``, the **fraction of the effect explained**: ``1 − Σ (e − ê)² / Σ (e − ē)²`` over every row (sample × set);
  1 when the first-order estimate is exact, 0 when it does no better than the mean effect, negative when worse;
- ``rel_nonlinearity``: ``mean |e − ê| / mean |e|``, the typical size of what the estimate misses against the
  typical size of the effect;
- ``corr``: Pearson's correlation of ``e`` and ``ê`` (how well the estimate *ranks*, whatever its scale).

Each comes with a percentile **bootstrap CI over samples** (samples drawn with replacement, each bringing all its
rows of the group; ``n_boot`` draws from a fixed seed, so the table is the same bytes every run). Single layers
are a control: their nonlinearity is one layer's own curvature, with no interaction in it; a set size whose ``r2``
falls below the singles' is where layers interact beyond first order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .interactions import GROUP
from .linear import ESTIMATED, estimated_effect

#: bootstrap draws and the CI's coverage
N_BOOT = 1000
COVERAGE = 0.95


def _per_sample_sums(e: np.ndarray, est: np.ndarray, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: ``[n_samples, 9]`` sums (rows, e, e², res², |res|, |e|, ê, ê², e·ê; see :func:`_stats`) and the
    sample ids."""
    ids, inv = np.unique(sample, return_inverse=True)
    res = e - est
    parts = np.stack([np.ones_like(e), e, e * e, res * res, np.abs(res), np.abs(e), est, est * est, e * est], 1)
    out = np.zeros((len(ids), parts.shape[1]))
    np.add.at(out, inv, parts)
    return out, ids


def _stats(t: np.ndarray) -> dict[str, np.ndarray]:
    """``r2``, ``rel_nonlinearity`` and ``corr`` from summed columns ``t: [..., 9]`` (of :func:`_per_sample_sums`)."""
    n, se, se2, sres2, sabsres, sabse, sest, sest2, sxy = (t[..., i] for i in range(9))
    with np.errstate(divide="ignore", invalid="ignore"):
        ss_tot = se2 - se * se / n
        cov = sxy - se * sest / n
        var_est = sest2 - sest * sest / n
        return {"r2": np.where(ss_tot > 0, 1 - sres2 / ss_tot, np.nan),
                "rel_nonlinearity": np.where(sabse > 0, sabsres / sabse, np.nan),
                "corr": np.where((ss_tot > 0) & (var_est > 0), cov / np.sqrt(ss_tot * var_est), np.nan)}


def linearity_table(rows: pd.DataFrame, effect: str = "delta_logit_vs_target", n_boot: int = N_BOOT,
                    seed: int = 0) -> pd.DataFrame:
    """Per (model, position, set size): how much of the patch effect the linear estimate explains.

    Args:
        rows: the sweep's patch table with the estimate columns.
        effect: the effect column; its own estimate where :data:`ivlens.patching.linear.ESTIMATED` has one, else
            the logit's (the ``effect`` column of the result says which).
        n_boot: bootstrap draws over samples; seed: their seed.

    Returns:
        ``model, position, set_size, n_samples, n_sets, mean_abs_effect, mean_abs_nonlinearity`` and
        ``r2, rel_nonlinearity, corr`` each with ``_lo`` / ``_hi`` (the 95 % bootstrap CI), ``effect``; empty
        when the rows carry no estimate.
    """
    eff = estimated_effect(effect)
    est_col = ESTIMATED[eff][0]
    if est_col not in rows or rows.empty:
        return pd.DataFrame()
    recs = []
    for gi, ((model, pos, size), g) in enumerate(rows.groupby([*GROUP, "set_size"], sort=False)):
        g = g[g[eff].notna() & g[est_col].notna()]
        if g.empty:
            continue
        per, ids = _per_sample_sums(g[eff].to_numpy(float), g[est_col].to_numpy(float), g["sample"].to_numpy())
        point = _stats(per.sum(0))
        rng = np.random.default_rng([seed, gi])
        draws = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=n_boot)  # [n_boot, n_samples]
        boot = _stats(draws @ per)
        n = per[:, 0].sum()
        rec = {"model": model, "position": pos, "set_size": int(size), "n_samples": len(ids),
               "n_sets": int(g.layers.nunique()), "mean_abs_effect": per[:, 5].sum() / n,
               "mean_abs_nonlinearity": per[:, 4].sum() / n}
        alpha = (1 - COVERAGE) / 2
        for k, v in point.items():
            b = boot[k][np.isfinite(boot[k])]
            rec[k] = float(v)
            rec[f"{k}_lo"], rec[f"{k}_hi"] = ((float(np.quantile(b, alpha)), float(np.quantile(b, 1 - alpha)))
                                              if len(b) and len(ids) > 1 else (np.nan, np.nan))
        rec["effect"] = eff
        recs.append(rec)
    return pd.DataFrame(recs)


def summary_lines(table: pd.DataFrame) -> list[str]:
    """One printed line per (model, position, set size) of a :func:`linearity_table`."""
    out = []
    for r in table.itertuples():
        out.append(f"{r.model} · {r.position} · size {r.set_size}: the linear estimate explains "
                   f"R² {r.r2:.2f} [{r.r2_lo:.2f}, {r.r2_hi:.2f}] of {r.effect} over {r.n_sets} sets × "
                   f"{r.n_samples} samples; mean |nonlinearity| / mean |effect| {r.rel_nonlinearity:.2f} "
                   f"[{r.rel_nonlinearity_lo:.2f}, {r.rel_nonlinearity_hi:.2f}] (95% bootstrap CI over samples)")
    return out
