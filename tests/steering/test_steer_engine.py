"""Additive edits (steering) in the patching engine against an independent forward-hook reference, to 1e-5."""

from __future__ import annotations

import pytest
import steering_reference as ref
import torch

from ivlens.models.adapters import get_adapter
from ivlens.patching.engine import EngineStats, RowSpec, clean_run, patched_logits
from ivlens.patching.trie import scheduled_work
from ivlens.testing.tiny import ARCHS, tiny_model

TOL = 1e-5


def _model(arch: str):
    kv = None if arch in ("gpt2", "gpt_neox") else 2
    return tiny_model(arch, seed=1, n_layers=4, d_model=64, n_heads=4, n_kv_heads=kv)


@pytest.mark.parametrize("arch", ARCHS)
def test_additive_edits_match_hook_reference(arch):
    """α·v added after one or several layers, at one position, from a position to the end, and at every position,
    of prompts of different lengths (left-padded together), for two vectors of different norms."""
    model = _model(arch)
    adapter = get_adapter(model)
    targets = [(5, 6, 7, 8, 9, 10), (11, 12, 13), (20,)]
    gen = torch.Generator().manual_seed(0)
    vecs = torch.randn(2, 4, 64, generator=gen) * torch.tensor([0.5, 3.0])[:, None, None]  # [source, layer, d_model]
    clean = clean_run(adapter, targets, pad_id=1)
    rows = []
    for t, ids in enumerate(targets):
        n = len(ids)
        for layers in [(0,), (2,), (3,), (1, 2)]:
            for src in range(2):
                rows += [RowSpec(t, src, layers, p) for p in range(n)]  # one position
                rows.append(RowSpec(t, src, layers, 0, n))  # every position
                rows.append(RowSpec(t, src, layers, n // 2, n - n // 2))  # from the middle to the end
    stats = EngineStats()
    got = patched_logits(adapter, clean, vecs, rows, batch_size=5, stats=stats, edit="add")
    for r, logits in zip(rows, got, strict=True):
        want = ref.steered_logits(model, targets[r.target], vecs[r.source], r.layers, range(r.token, r.token + r.span))
        torch.testing.assert_close(logits, want, atol=TOL, rtol=0)
    # an addition is not a replacement: the last-position identity (S, last) ≡ ({max S}, last) is not applied
    assert stats.unique_rows == len(set(rows))
    scheduled = scheduled_work(rows, clean.lengths, adapter.n_layers, group_rows=5, edit="add")
    assert scheduled.executed_evals == stats.executed_evals and scheduled.unique_rows == stats.unique_rows


def test_zero_vector_is_the_clean_run_and_replace_spans():
    """α = 0 reproduces the clean run; a replacement over a span writes the vector at every position of it."""
    model = _model("olmo2")
    adapter = get_adapter(model)
    targets = [(5, 6, 7, 8), (9, 10)]
    clean = clean_run(adapter, targets, pad_id=1)
    zero = torch.zeros(1, 4, 64)
    got = patched_logits(adapter, clean, zero, [RowSpec(0, 0, (1,), 0, 4), RowSpec(1, 0, (2,), 1)], edit="add")
    torch.testing.assert_close(got, clean.last_logits, atol=TOL, rtol=0)
    v = torch.randn(1, 4, 64, generator=torch.Generator().manual_seed(3))
    rep = patched_logits(adapter, clean, v, [RowSpec(0, 0, (2,), 1, 3)], edit="replace")[0]
    # reference: replacing = adding (v − current residual), with the current residual from the clean run
    delta = {2: v[0, 2] - clean.resid[2][0, -3:]}  # [3, d_model]: one difference per position
    want = ref.steered_logits(model, targets[0], delta, (2,), range(1, 4))  # [3, d_model] added at 1..3
    torch.testing.assert_close(rep, want, atol=TOL, rtol=0)


def test_bad_edit_and_span_are_refused():
    model = _model("olmo2")
    adapter = get_adapter(model)
    clean = clean_run(adapter, [(5, 6, 7)], pad_id=1)
    v = torch.zeros(1, 4, 64)
    with pytest.raises(ValueError, match="edit span 3 from position 1"):
        patched_logits(adapter, clean, v, [RowSpec(0, 0, (1,), 1, 3)], edit="add")
    with pytest.raises(ValueError, match="unknown edit 'mix'"):
        patched_logits(adapter, clean, v, [RowSpec(0, 0, (1,), 1)], edit="mix")


def test_equal_added_vectors_run_once_with_the_same_results():
    """Rows that add equal vectors at a layer (α = 0 for every direction: ±0) get one source
    (:func:`first_equal_sources`): the engine runs them once, and every row's logits are those of its own source."""
    from ivlens.steering.sweep import first_equal_sources

    model = _model("olmo2")
    adapter = get_adapter(model)
    targets = [(5, 6, 7, 8, 9), (11, 12, 13, 14, 15)]
    unit = torch.randn(2, 4, 64, generator=torch.Generator().manual_seed(2))  # [vector, layer, d_model]
    edits = (torch.tensor([0.0, 1.0, -2.0])[None, :, None, None] * unit[:, None]).reshape(6, 4, 64)  # vector-major
    edits[4, 2] = edits[1, 2]  # an equal vector at one layer only
    first = first_equal_sources(edits)
    want = torch.arange(6)[:, None].repeat(1, 4).numpy()
    want[3] = 0  # the second direction's α = 0: the first's zero vector (0 · v is −0 where v < 0)
    want[4, 2] = 1
    assert (first == want).all()
    clean = clean_run(adapter, targets, pad_id=1)
    rows = [RowSpec(t, src, (layer,), p, span) for t in range(2) for src in range(6) for layer in range(4)
            for p, span in ((1, 1), (0, 5))]
    shared = [RowSpec(r.target, int(first[r.source, r.layers[0]]), r.layers, r.token, r.span) for r in rows]
    alone, once = EngineStats(), EngineStats()
    got = patched_logits(adapter, clean, edits, shared, batch_size=64, stats=once, edit="add")
    ref_logits = patched_logits(adapter, clean, edits, rows, batch_size=64, stats=alone, edit="add")
    torch.testing.assert_close(got, ref_logits, atol=TOL, rtol=0)
    assert once.unique_rows == alone.unique_rows - 2 * 5 * 2  # per target: α = 0 at 4 layers, the equal one, 2 spans
