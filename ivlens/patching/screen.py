"""``--screen K``: rank every layer set by its linear estimate, run the exact engine on the top ``K`` only.

The linear estimate of a set is a sum of per-layer terms (:mod:`ivlens.patching.linear`), so once the gradients
of every sample are known (one forward and one backward each), every set of every size is ranked for the cost of
a sum: every 4-set of a 32-layer model (35,960 sets) as cheaply as its 32 singles.

**Ranking.** Per (model, position, set size ≥ 2): the sets ordered by ``|mean over samples of the estimate|``,
largest first (ties in the plan's order), where the estimate is that of the computation the engine runs
(:func:`run_estimates`): where the patched position is the target's last token, the engine runs ``(S, last)`` as
``({max S}, last)`` (exactly the same result, :mod:`ivlens.patching.engine`), so the screen ranks that set by its
highest layer's term; elsewhere by the row's ``linear_estimate``, the sum over ``S``. The absolute value, because a set matters to the analyses whichever way
it moves the scored logit: interactions are tested two-sided (super- and subadditive), and a set that suppresses
the instructed label is as much a finding as one that restores it. The exact sweep then runs:

- every single layer (the additive prediction of every set needs them, :mod:`ivlens.patching.interactions`);
- for every set size ≥ 2, the union over positions of each position's top ``K`` (every position runs the same
  sets, so a set screened in at one position is measured exactly at every position; a position may therefore
  have more than ``K`` exact sets of a size).

The run writes the ranking (:func:`screen_table`, the ``screen`` table) and the exact rows of the screened sets;
how good the screen is, is measured where the exact sweep of every set was also run: :func:`recall_at_k`, the
share of the exact top ``K`` (by ``|mean effect|``) that the screen's top ``K`` holds
(``benchmarks/linear_screen.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .linear import set_sums
from .plan import LayerSet, layer_set_label

TABLE = "screen"


def run_estimates(terms: np.ndarray, layer_sets: Sequence[LayerSet], is_last: np.ndarray) -> np.ndarray:
    """The linear estimate of what the engine computes for each row, ``[n, P, sets]``: the sum of the set's terms
    (:func:`ivlens.patching.linear.set_sums`), except where the position is the target's last token
    (``is_last: [n, P]``), where ``(S, last)`` runs as ``({max S}, last)`` and the highest layer's term is its
    estimate.

    >>> run_estimates(np.array([[[1.0, 2.0, 4.0]] * 2]), [(0,), (0, 2)], np.array([[False, True]]))
    array([[[1., 5.],
            [1., 4.]]])
    """
    summed = set_sums(terms, layer_sets)  # [n, P, sets]
    highest = np.asarray(terms, dtype=np.float64)[..., [s[-1] for s in layer_sets]]
    return np.where(np.asarray(is_last, dtype=bool)[..., None], highest, summed)


def screen_table(estimates: np.ndarray, layer_sets: Sequence[LayerSet], positions: Sequence[str], k: int,
                 model: str, effect: str) -> pd.DataFrame:
    """The ranking of every layer set by its linear estimate, per position.

    Args:
        estimates: ``[samples, positions, sets]`` every set's linear estimate per sample (:func:`run_estimates`).
        layer_sets: the sets (the plan's, sorted by size then lexicographically).
        positions: the position names (the rows' ``position`` column).
        k: sets kept per (position, set size ≥ 2).
        model: the model's name (a column); effect: the effect column whose estimate ranks (a column).

    Returns:
        One row per (position, set): ``model, position, layers, set_size, estimate_mean, estimate_sem``, ``rank``
        (1 = largest ``|estimate_mean|`` among the sets of its size and position), ``selected`` (``rank ≤ k``;
        singles always), ``run`` (the set's exact rows are computed: selected at some position), ``k``, ``effect``.
    """
    n, n_pos, n_sets = estimates.shape
    mean = estimates.mean(0)  # [positions, sets]
    sem = estimates.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.full_like(mean, np.nan)
    size = np.array([len(s) for s in layer_sets], dtype=np.int64)
    rank = np.zeros((n_pos, n_sets), dtype=np.int64)
    for p in range(n_pos):
        for k_size in np.unique(size):
            cols = np.flatnonzero(size == k_size)
            rank[p, cols[top_k(mean[p, cols], len(cols))]] = np.arange(1, len(cols) + 1)
    selected = (rank <= k) | (size[None] == 1)
    run = selected.any(0)
    labels = np.array([layer_set_label(s) for s in layer_sets], dtype=object)
    return pd.DataFrame({
        "model": np.repeat(np.array([model], dtype=object), n_pos * n_sets),
        "position": np.repeat(np.array([str(x) for x in positions], dtype=object), n_sets),
        "layers": np.tile(labels, n_pos),
        "set_size": np.tile(size, n_pos),
        "estimate_mean": mean.reshape(-1),
        "estimate_sem": sem.reshape(-1),
        "rank": rank.reshape(-1),
        "selected": selected.reshape(-1),
        "run": np.tile(run, n_pos),
        "k": np.full(n_pos * n_sets, k, dtype=np.int64),
        "effect": np.repeat(np.array([effect], dtype=object), n_pos * n_sets),
    })


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``|values|``, largest first (ties: the earlier index first).

    >>> top_k(np.array([0.1, -0.5, 0.3, 0.5]), 2)
    array([1, 3])
    """
    return np.argsort(-np.abs(np.asarray(values, dtype=float)), kind="stable")[:k]


def screened_sets(table: pd.DataFrame, layer_sets: Sequence[LayerSet]) -> tuple[LayerSet, ...]:
    """The sets of ``layer_sets`` (in their order) that :func:`screen_table` marks to ``run``."""
    keep = set(table.loc[table["run"].astype(bool), "layers"])
    return tuple(s for s in layer_sets if layer_set_label(s) in keep)


def recall_at_k(screen: pd.DataFrame, exact_rows: pd.DataFrame, k: int | None = None,
                effect: str | None = None) -> pd.DataFrame:
    """How many of the exact top ``K`` sets the screen's top ``K`` found, per (model, position, set size ≥ 2).

    Args:
        screen: a :func:`screen_table` (of every set, as the run writes it).
        exact_rows: patch rows of an exact sweep of every set on the same samples (``layers``, ``set_size`` and
            the effect column).
        k: the ``K`` to score (default: the screen's own); effect: the exact effect column (default: the
            screen's ``effect``).

    Returns:
        ``model, position, set_size, n_sets, k, found, recall`` (``found / k``; ``k`` is at most ``n_sets``;
        ``found`` counts the screen's top ``K`` whose ``|mean effect|`` reaches the exact ``K``-th largest, so
        sets tied with it count), and ``exact_top`` / ``screen_top``: the two top-``K`` lists, ``;``-separated,
        best first (ties in the plan's order).
    """
    k = int(screen["k"].iloc[0]) if k is None else k
    effect = str(screen["effect"].iloc[0]) if effect is None else effect
    multi = exact_rows[exact_rows.set_size >= 2]
    exact = multi.groupby(["model", "position", "layers", "set_size"], sort=False)[effect].mean().reset_index()
    recs = []
    for (model, pos, size), g in exact.groupby(["model", "position", "set_size"], sort=False):
        sc = screen[(screen.model == model) & (screen.position == pos) & (screen.set_size == size)]
        kk = min(k, len(g))
        exact_abs = np.abs(g[effect].to_numpy(float))
        top_exact = list(g.layers.iloc[top_k(exact_abs, kk)])
        top_screen = list(sc.sort_values("rank").layers[:kk])
        # a set tied with the exact K-th is as much in the exact top K as the one the order happened to keep
        # (ties are exact where the engine computes one row for several sets: at the last position, every set
        # with the same highest layer)
        bar = np.sort(exact_abs)[::-1][kk - 1] if kk else np.inf
        exact_abs_of = dict(zip(g.layers, exact_abs, strict=True))
        found = sum(exact_abs_of[s] >= bar for s in top_screen)
        recs.append({"model": model, "position": pos, "set_size": int(size), "n_sets": len(g), "k": kk,
                     "found": found, "recall": found / kk if kk else np.nan,
                     "exact_top": ";".join(top_exact), "screen_top": ";".join(top_screen)})
    return pd.DataFrame(recs)
