"""Which edits of the residual stream can reach the scored logits at all (pure; no model runs).

An edit after layer ``l`` at positions ``p … p + span − 1`` (a patch replaces ``resid_post[l][p]``, steering adds
to ``span`` positions) changes nothing before ``p``. Later layers carry it forward only through attention: a query
at ``q`` reads keys ``k ≤ q``, and in a layer with a sliding window ``w`` only ``k > q − w``, so one layer moves a
change at most ``w − 1`` positions on; the MLP and the residual keep it where it is. After layers ``l + 1 … L − 1``
the positions that can differ from the clean run are therefore ``p … p + span − 1 + R(l)`` with
``R(l) = Σ_{k > l} (w_k − 1)``, or every position from ``p`` on once a later layer attends fully (``R = ∞``).

The logits are read at the prompt's last position ``T − 1`` (and, when answers are scored whole, at the answer's
positions after it). An edit whose reach ends before ``T − 1`` has an effect of exactly 0 **by construction**:
e.g. a patch at any position but the last in the last layer, which only the unembedding at that position reads
(``R(L − 1) = 0``), or an early-position patch in a model of sliding windows too short to carry it to the end.
Summaries must not rank such edits ("strongest layer … mean 0.000 ± 0.000" measures nothing).

For a layer set the lowest layer bounds the reach: higher layers rewrite position ``p`` only, which the lowest
layer's edit has already changed, and ``R`` only shrinks with the layer.

Shapes: ``layer`` indexes the decoder layers; the row arrays are ``[rows]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ivlens.models.adapters.derive import sliding_window_of, text_config


def attention_windows(model, n_layers: int) -> tuple[int | None, ...]:
    """The sliding window of every decoder layer of ``model`` (``None``: full attention), from its config."""
    config = text_config(model)
    return tuple(sliding_window_of(config, layer) for layer in range(n_layers))


def reach(windows: Sequence[int | None]) -> np.ndarray:
    """``[layer]``: how many positions past an edit after that layer the later layers can carry it (``inf``
    where a later layer attends fully); ``0`` for the last layer."""
    out = np.zeros(len(windows))
    carried = 0.0
    for layer in range(len(windows) - 1, -1, -1):
        out[layer] = carried
        w = windows[layer]
        carried = math.inf if w is None else carried + (w - 1)
    return out


def reaches_logits(windows: Sequence[int | None], first_layer, pos_index, n_tokens, span=1) -> np.ndarray:
    """``[rows]`` bool: whether an edit after ``first_layer`` (a set's lowest layer) at ``pos_index … pos_index +
    span − 1`` of a ``n_tokens``-token prompt can change the logits at its last position; ``False`` means its
    effect is 0 by construction (see the module docstring). Arguments broadcast like numpy arrays."""
    far = np.asarray(pos_index) + np.asarray(span) - 1 + reach(windows)[np.asarray(first_layer)]
    return np.asarray(far >= np.asarray(n_tokens) - 1)


def zero_by_construction(rows, keys: Sequence[str]):
    """Per group of ``keys``: ``True`` where no row's edit reaches the logits (the ``reaches_logits`` column;
    a table without it, from an older run, makes no claim: ``False``). Returns a Series indexed by ``keys``."""
    if "reaches_logits" not in rows:
        return rows.groupby(list(keys), sort=False).size().astype(bool) & False
    return ~rows.groupby(list(keys), sort=False)["reaches_logits"].any()
