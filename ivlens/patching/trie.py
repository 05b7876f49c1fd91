"""The patching engine's scheduler: which rows are distinct computations, how they share work and in which order
they run (the schedule), from the row specs alone (no model, no tensors; numpy index arrays).

:func:`dedup_rows` validates the rows and keeps one per distinct computation (at the last position a replaced set
counts as its highest layer alone); :func:`schedule_groups` sorts them by suffix length ``s = T − p`` and by
``(target, source, span, layer set)``, cuts them into groups of at most ``G`` rows made of whole subtrees, and
schedules each group as a trie over layer sets (:class:`TrieGroup`: per layer, which states run, which continue
which, which get which source's vector); :func:`scheduled_work` counts the work the engine will do for a list of
rows, so cost estimates reuse the engine's schedule. Why the trie is exact and what it saves:
:mod:`ivlens.patching.engine`, which executes these schedules (forward passes). (A sweep's *plan*, the layer sets
and positions it computes, is :mod:`ivlens.patching.plan`'s.)

Shapes: ``rows`` counts patch configurations; a group's arrays are indexed by its members (unique rows) or its
trie states.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .plan import LayerSet


@dataclass
class EngineStats:
    """Work counters. ``executed_evals``: layer-token evaluations run for patched rows; ``minimal_evals``: the
    per-row minimum for the requested rows, ``Σ (L − 1 − l0)(T − p)`` (what a row needs on its own; sharing
    between rows goes below it); ``baseline_evals``: those of clean, instructed and source runs; ``layer_calls``:
    batched decoder-layer calls for patched rows; ``unique_rows``: distinct computations among ``rows``;
    ``unembed_rows``: final residuals unembedded for patched rows; ``groups``: bounded tries run;
    ``gradient_evals``: layer-token evaluations of the linear estimate's forwards (:mod:`ivlens.patching.linear`;
    each followed by a backward per scored logit)."""

    executed_evals: int = 0
    minimal_evals: int = 0
    baseline_evals: int = 0
    layer_calls: int = 0
    rows: int = 0
    unique_rows: int = 0
    unembed_rows: int = 0
    groups: int = 0
    gradient_evals: int = 0

    def add(self, other: EngineStats) -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class RowSpec:
    """One patched row: clean-run batch row ``target``, source row ``source`` (into the IV tensor), the layer set,
    and ``token``: the patched position as an index into the target prompt's own tokens; ``span``: positions
    ``token … token + span − 1`` are edited (``1`` for patching; additive edits may cover more, e.g. every token)."""

    target: int
    source: int
    layers: LayerSet
    token: int
    span: int = 1


RowKey = tuple[int, int, LayerSet, int, int]  # (target, source, layer set after the last-position identity, token, span)
Edit = str  # "replace" (patching: the vector replaces the residual) or "add" (steering: it is added)
EDITS = ("replace", "add")


@dataclass
class TrieStep:
    """The trie entering layer ``k`` → leaving it. ``parent[j]``: the state (index before the step) that state ``j``
    continues, ``-1`` where it starts from the clean ``resid_post[k]``; ``target[j]``: its target; states
    ``patch[i]`` get source ``src[i]``'s IV at suffix columns ``0 … span[i] − 1``. ``None`` as a step: the states
    pass unchanged."""

    parent: np.ndarray
    target: np.ndarray
    patch: np.ndarray
    src: np.ndarray
    span: np.ndarray


@dataclass
class TrieGroup:
    """One bounded trie: unique rows ``members`` (indices into the unique keys) with suffix length ``s``; ``steps[k]``
    for every layer; ``final[i]``: the state of member ``i`` after the last layer; ``runs[k]``: states entering
    layer ``k`` (layer ``k`` runs on them when ``k > 0`` and there are any)."""

    s: int
    members: np.ndarray
    steps: list[TrieStep | None]
    final: np.ndarray
    runs: list[int]


def dedup_rows(rows: Sequence[RowSpec], lengths: Sequence[int], n_layers: int, edit: Edit = "replace",
           continued: bool = False) -> tuple[list[RowKey], np.ndarray, int]:
    """Validate ``rows``; distinct computations (keys), the requested row → key index map, and the per-row minimal
    layer-token evaluations. ``continued``: the rows' keys/values are read by tokens after the prompt (answer
    scoring), so the last-position identity does not hold (a set's lower layers change the last position's keys
    and values, which later tokens attend to)."""
    if edit not in EDITS:
        raise ValueError(f"unknown edit {edit!r}; use {' or '.join(EDITS)}")
    L = n_layers
    unique: dict[RowKey, int] = {}
    where = np.empty(len(rows), dtype=np.int64)
    minimal = 0
    for i, r in enumerate(rows):
        layers = r.layers
        if not layers or layers[0] < 0 or layers[-1] >= L or any(a >= b for a, b in zip(layers[:-1], layers[1:], strict=True)):
            raise ValueError(f"bad layer set {layers}: sorted, distinct layers in 0..{L - 1} expected")
        n_tok = lengths[r.target]
        if not 0 <= r.token < n_tok:
            raise ValueError(f"patch position {r.token} outside the target prompt ({n_tok} tokens)")
        if not 1 <= r.span <= n_tok - r.token:
            raise ValueError(f"edit span {r.span} from position {r.token} outside the target prompt ({n_tok} tokens)")
        # At the last position a patch overwrites the whole residual that later layers read there (earlier
        # positions are untouched), so only the highest patched layer matters: (S, last) ≡ ({max S}, last).
        # An addition keeps what was there, so the identity is a replacement's only.
        last = edit == "replace" and r.token == n_tok - 1 and not continued
        key = (r.target, r.source, layers[-1:] if last else layers, r.token, r.span)
        u = unique.get(key)
        if u is None:
            u = unique[key] = len(unique)
        where[i] = u
        minimal += (L - 1 - layers[0]) * (n_tok - r.token)
    return list(unique), where, minimal


def _partition(keys: list[RowKey], members: list[int], cap: int) -> list[list[int]]:
    """Cut ``members`` (sorted by ``(target, source, span, layers)``) into groups of at most ``cap`` rows made of
    whole trie subtrees where possible (a subtree: the rows of one target, source and span whose layer sets share
    a prefix)."""
    groups: list[list[int]] = []
    cur: list[int] = []

    def add(block: list[int], depth: int) -> None:
        nonlocal cur
        if len(cur) + len(block) <= cap:
            cur.extend(block)
            return
        if len(block) <= cap:
            groups.append(cur)
            cur = list(block)
            return
        # too big for one group: split at the next layer of the sets (the set that ends here first)
        start = 0
        for i in range(1, len(block) + 1):
            if i == len(block) or _at(keys[block[i]], depth) != _at(keys[block[start]], depth):
                add(block[start:i], depth + 1)
                start = i

    start = 0
    for i in range(1, len(members) + 1):  # blocks of one (target, source, span)
        if i == len(members) or _owner(keys[members[i]]) != _owner(keys[members[start]]):
            add(members[start:i], 0)
            start = i
    if cur:
        groups.append(cur)
    return [g for g in groups if g]


def _owner(key: RowKey) -> tuple[int, int, int]:
    """What a trie state is specific to besides its patch prefix: ``(target, source, span)``."""
    return key[0], key[1], key[4]


def _at(key: RowKey, depth: int) -> int:
    layers = key[2]
    return layers[depth] if depth < len(layers) else -1


def _group_trie(keys: list[RowKey], members: list[int], s: int, n_layers: int) -> TrieGroup:
    """The trie of one group, as index arrays per layer (numpy; no model tensors)."""
    L = n_layers
    t = np.array([keys[u][0] for u in members], dtype=np.int64)
    src = np.array([keys[u][1] for u in members], dtype=np.int64)
    span = np.array([keys[u][4] for u in members], dtype=np.int64)
    # (target, source, span) → owner id; layer sets → bit masks (object ints past 62 layers)
    _, owner = np.unique(np.stack([t, src, span], 1), axis=0, return_inverse=True)
    owner = owner.reshape(-1)
    big = L > 62
    mask = np.array([sum(1 << x for x in keys[u][2]) for u in members], dtype=object if big else np.int64)
    state = np.full(len(members), -1, dtype=np.int64)  # each row's state entering the layer (-1: none yet)
    n_states = 0
    steps: list[TrieStep | None] = []
    runs: list[int] = []
    for k in range(L):
        runs.append(n_states)
        bit = (mask >> k) & 1
        hit = (bit != 0) if not big else np.array([b != 0 for b in bit], dtype=bool)
        if not hit.any():  # nobody patches or starts here: states pass through unchanged
            steps.append(None)
            continue
        active = (state >= 0) | hit
        prefix = mask & ((1 << (k + 1)) - 1)
        if big:
            _, pid = np.unique(prefix[active].astype(str), return_inverse=True)
        else:
            _, pid = np.unique(prefix[active], return_inverse=True)
        idx = np.flatnonzero(active)
        key2 = np.stack([owner[idx], pid.reshape(-1)], 1)
        _, first, inv = np.unique(key2, axis=0, return_index=True, return_inverse=True)
        rep = idx[first]  # a representative row of each new state
        new_state = np.full(len(members), -1, dtype=np.int64)
        new_state[idx] = inv.reshape(-1)
        steps.append(TrieStep(parent=state[rep], target=t[rep], patch=np.flatnonzero(hit[rep]), src=src[rep][hit[rep]],
                           span=span[rep][hit[rep]]))
        state = new_state
        n_states = len(rep)
    return TrieGroup(s=s, members=np.asarray(members, dtype=np.int64), steps=steps, final=state, runs=runs)


def states_per_layer(g: TrieGroup) -> list[np.ndarray]:
    """Each member's trie state entering (and leaving) layer ``k``, per layer, ``-1`` where it has none yet: undo the
    steps from the last layer down (the state after step ``k − 1`` is the one layer ``k`` runs on)."""
    cur = g.final.copy()
    out: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(g.steps)
    for k in range(len(g.steps) - 1, -1, -1):
        step = g.steps[k]
        if step is not None:
            cur = np.where(cur >= 0, step.parent[np.clip(cur, 0, None)], -1)
        out[k] = cur
    return out


def schedule_groups(keys: list[RowKey], lengths: Sequence[int], n_layers: int,
                    group_rows: int | Callable[[int], int]) -> Iterator[TrieGroup]:
    """Groups of every suffix length (shortest first), each scheduled as a trie, lazily (one in memory at a time)."""
    by_s: dict[int, list[int]] = {}
    for u, key in enumerate(keys):
        by_s.setdefault(lengths[key[0]] - key[3], []).append(u)
    for s in sorted(by_s):
        # one target, source and span together: they share states
        members = sorted(by_s[s], key=lambda u: (*_owner(keys[u]), keys[u][2]))
        cap = group_rows(s) if callable(group_rows) else group_rows
        for g in _partition(keys, members, max(1, cap)):
            yield _group_trie(keys, g, s, n_layers)


def scheduled_work(rows: Sequence[RowSpec], lengths: Sequence[int], n_layers: int, *,
                   group_rows: int | Callable[[int], int], edit: Edit = "replace",
                   continued: bool = False) -> EngineStats:
    """The work the engine will do for ``rows``, counted without running anything (no tensors).

    Args:
        rows: the row specs, as for :func:`~ivlens.patching.engine.patched_metrics` (``target`` indexes
            ``lengths``).
        lengths: tokens of each target prompt (unpadded).
        n_layers: decoder layers of the model.
        group_rows: rows per bounded trie, a number or a function of the suffix length ``s`` (the engine uses
            ``batch_size`` or :func:`~ivlens.patching.engine.auto_batch_size`
            ``(adapter, max(lengths), s, budget)``).
        edit: ``replace`` (patching) or ``add`` (steering), as the engine will run them.
        continued: the rows are scored at the answer level
            (:func:`~ivlens.patching.engine.patched_answer_logprobs`: no last-position identity; the trie of the
            candidates comes on top of this count).

    Returns:
        :class:`EngineStats` with ``executed_evals, minimal_evals, layer_calls, rows, unique_rows, unembed_rows,
        groups`` exactly as the engine reports them for these rows (``baseline_evals`` 0: clean and source runs
        are the caller's: ``n_layers × Σ tokens`` each).

    >>> st = scheduled_work([RowSpec(0, 0, (1, 3), 0)], lengths=[5], n_layers=6, group_rows=1024)
    >>> st.executed_evals, st.unembed_rows
    (20, 1)
    """
    keys, _where, minimal = dedup_rows(rows, lengths, n_layers, edit, continued)
    st = EngineStats(minimal_evals=minimal, rows=len(rows), unique_rows=len(keys))
    for g in schedule_groups(keys, lengths, n_layers, group_rows):
        count_group(g, st)
    return st


def count_group(g: TrieGroup, st: EngineStats) -> None:
    for k in range(1, len(g.runs)):
        if g.runs[k]:
            st.executed_evals += g.runs[k] * g.s
            st.layer_calls += 1
    st.unembed_rows += len(g.members)
    st.groups += 1
