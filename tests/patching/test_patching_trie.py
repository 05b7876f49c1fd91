"""The patching engine's scheduler on its own (no model, no tensors): deduplication, bounded groups of whole
subtrees, the trie over layer sets and its work count, checked against counts worked out by hand from the
engine's semantics (a row with first patched layer ``l0`` at position ``p`` runs layers ``l0+1 … L−1`` on the
``T − p`` positions from ``p``; rows that agree on their patches below layer ``k`` are one state there)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ivlens.patching.trie import (
    EngineStats,
    RowSpec,
    count_group,
    dedup_rows,
    schedule_groups,
    scheduled_work,
    states_per_layer,
)

pytestmark = pytest.mark.unit


def _naive_evals(rows: list[RowSpec], lengths: list[int], n_layers: int) -> int:
    """Layer-token evaluations of the trie, counted the slow way: one state per distinct (target, source, span,
    patch prefix below k) among the rows that have started by layer k, for every layer k ≥ 1."""
    total = 0
    for k in range(1, n_layers):
        states = {(r.target, r.source, r.span, lengths[r.target] - r.token, tuple(x for x in r.layers if x < k))
                  for r in rows if r.layers[0] < k}
        total += sum(s[3] for s in states)
    return total


def test_the_trie_shares_patch_prefixes_as_the_engine_docstring_says():
    # (0, 3), (0, 4) and (0, 3, 5) at the first of 5 tokens, 6 layers: one state entering layers 1–3, two
    # entering 4 and 5 ({0, 3} and {0, 4}); each evaluation covers the 5 recomputed positions
    rows = [RowSpec(0, 0, s, 0) for s in ((0, 3), (0, 4), (0, 3, 5))]
    st = scheduled_work(rows, lengths=[5], n_layers=6, group_rows=1024)
    assert st.executed_evals == (1 + 1 + 1 + 2 + 2) * 5 == 35
    assert st.minimal_evals == 3 * (6 - 1 - 0) * 5 == 75  # what each row needs on its own
    assert (st.layer_calls, st.rows, st.unique_rows, st.unembed_rows, st.groups) == (5, 3, 3, 3, 1)
    assert st.baseline_evals == st.gradient_evals == 0


def test_the_last_position_keeps_only_the_highest_layer_of_a_replacement():
    rows = [RowSpec(0, 0, (0, 3), 4), RowSpec(0, 0, (3,), 4), RowSpec(0, 0, (1, 3), 4), RowSpec(0, 0, (0, 3), 0)]
    keys, where, minimal = dedup_rows(rows, [5], 6)
    assert keys == [(0, 0, (3,), 4, 1), (0, 0, (0, 3), 0, 1)]
    assert where.tolist() == [0, 0, 0, 1]
    assert minimal == (5 - 0) * 1 + (5 - 3) * 1 + (5 - 1) * 1 + 5 * 5
    # an addition keeps what was there, and answer scoring reads the lower layers' keys: no identity
    for kw in ({"edit": "add"}, {"continued": True}):
        keys, where, _ = dedup_rows(rows, [5], 6, **kw)
        assert len(keys) == 4 and where.tolist() == [0, 1, 2, 3]


def test_identical_rows_are_one_computation():
    rows = [RowSpec(1, 2, (0, 2), 1)] * 3 + [RowSpec(1, 2, (0, 2), 1, span=2)]
    keys, where, minimal = dedup_rows(rows, [3, 4], 4)
    assert len(keys) == 2 and where.tolist() == [0, 0, 0, 1]
    assert minimal == 4 * (4 - 1 - 0) * (4 - 1)


@pytest.mark.parametrize("bad, message", [
    (RowSpec(0, 0, (), 0), "bad layer set"),
    (RowSpec(0, 0, (3, 1), 0), "bad layer set"),
    (RowSpec(0, 0, (2, 2), 0), "bad layer set"),
    (RowSpec(0, 0, (6,), 0), "bad layer set"),
    (RowSpec(0, 0, (-1,), 0), "bad layer set"),
    (RowSpec(0, 0, (1,), 5), "patch position 5 outside"),
    (RowSpec(0, 0, (1,), 3, span=3), "edit span 3 from position 3"),
])
def test_bad_rows_are_refused_with_the_reason(bad, message):
    with pytest.raises(ValueError, match=message):
        dedup_rows([bad], [5], 6)


def test_an_unknown_edit_is_refused():
    with pytest.raises(ValueError, match="unknown edit 'scale'; use replace or add"):
        dedup_rows([RowSpec(0, 0, (1,), 0)], [5], 6, edit="scale")


def _sweep(n_targets: int, n_sources: int, lengths: list[int], n_layers: int, size: int) -> list[RowSpec]:
    sets = [s for k in range(1, size + 1) for s in itertools.combinations(range(n_layers), k)]
    return [RowSpec(t, src, s, p) for t in range(n_targets) for src in range(n_sources) for s in sets
            for p in (0, lengths[t] // 2)]


@pytest.mark.parametrize("cap", [1, 3, 7, 40, 10_000])
def test_groups_are_bounded_cover_every_row_once_and_count_like_the_naive_trie(cap):
    lengths, L = [4, 6], 5
    rows = _sweep(2, 2, lengths, L, 3)
    keys, _, _ = dedup_rows(rows, lengths, L)
    groups = list(schedule_groups(keys, lengths, L, cap))
    members = np.concatenate([g.members for g in groups])
    assert sorted(members.tolist()) == list(range(len(keys)))  # every unique row in exactly one group
    assert all(len(g.members) <= cap for g in groups)
    for g in groups:  # one suffix length per group, and its members' suffixes agree
        assert {lengths[keys[u][0]] - keys[u][3] for u in g.members} == {g.s}
    st = scheduled_work(rows, lengths, L, group_rows=cap)
    assert st.groups == len(groups) and st.unembed_rows == len(keys)
    # within one group the trie is exactly the naive count of distinct prefix states
    expected = sum(_naive_evals([RowSpec(keys[u][0], keys[u][1], keys[u][2], keys[u][3], keys[u][4])
                                 for u in g.members], lengths, L) for g in groups)
    assert st.executed_evals == expected
    assert st.executed_evals <= st.minimal_evals


def test_one_row_per_group_is_the_per_row_minimum_and_one_group_shares_most():
    lengths, L = [5, 7], 6
    rows = _sweep(2, 1, lengths, L, 3)  # no duplicates: neither position is a last one
    work = [scheduled_work(rows, lengths, L, group_rows=cap) for cap in (1, 4, 16, 64, 1 << 20)]
    assert work[0].executed_evals == work[0].minimal_evals == sum(
        (L - 1 - r.layers[0]) * (lengths[r.target] - r.token) for r in rows)
    assert work[-1].executed_evals == min(w.executed_evals for w in work)  # one trie per suffix length
    assert work[-1].executed_evals < work[0].executed_evals / 2
    assert [w.groups for w in work] == sorted((w.groups for w in work), reverse=True)


def test_a_group_size_per_suffix_length():
    lengths, L = [6], 4
    rows = _sweep(1, 1, lengths, L, 2)
    keys, _, _ = dedup_rows(rows, lengths, L)
    groups = list(schedule_groups(keys, lengths, L, lambda s: 2 if s > 1 else 1000))
    assert [g.s for g in groups] == sorted(g.s for g in groups)  # shortest suffix first
    assert all(len(g.members) <= (2 if g.s > 1 else 1000) for g in groups)


def test_states_per_layer_follow_the_steps_back_from_the_final_states():
    lengths, L = [5], 6
    rows = [RowSpec(0, 0, s, 0) for s in ((0, 3), (0, 4), (0, 3, 5), (2,))]
    keys, _, _ = dedup_rows(rows, lengths, L)
    (g,) = schedule_groups(keys, lengths, L, 100)
    per_layer = states_per_layer(g)
    assert len(per_layer) == L
    for k in range(L):
        started = np.array([keys[u][2][0] < k for u in g.members])
        assert ((per_layer[k] >= 0) == started).all()  # a member has a state entering k once it has started
        # members share a state entering k exactly when they agree on their patches below k
        prefix = [tuple(x for x in keys[u][2] if x < k) for u in g.members]
        for i, j in itertools.combinations(range(len(g.members)), 2):
            if started[i] and started[j]:
                assert (per_layer[k][i] == per_layer[k][j]) == (prefix[i] == prefix[j])
        if k > 0:
            assert per_layer[k].max() + 1 == g.runs[k]  # the states layer k runs on
    st = EngineStats()
    count_group(g, st)
    assert st.executed_evals == _naive_evals(rows, lengths, L) and st.groups == 1
