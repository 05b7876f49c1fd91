"""The paper's argmax tracer: argmax edges, rank filter, and its reported error."""

from __future__ import annotations

import pytest
import torch

from ivlens.testing.tiny import TINY_VOCAB, tiny_model
from ivlens.tracing.argmax import argmax_patterns, argmax_surrogate, argmax_trace
from ivlens.tracing.graph import compute_graph
from ivlens.tracing.surrogate import Target, build_surrogate


@pytest.fixture(scope="module", params=["olmo2", "gpt_neox", "gemma2"])
def sur(request):
    """OLMo-2 (post-norm), GPT-NeoX (parallel residual), Gemma-2 (final soft-cap, sliding layers)."""
    model = tiny_model(request.param, seed=4, n_layers=3, d_model=32, n_heads=2)
    return build_surrogate(model, torch.randint(5, 300, (7,), generator=torch.Generator().manual_seed(2)))


def test_argmax_patterns_keep_one_edge_per_query(sur):
    for att, A in zip(sur.attn, argmax_patterns(sur), strict=True):
        assert ((A > 0).sum(-1) == 1).all()
        torch.testing.assert_close(A.max(-1).values, att.pattern.max(-1).values)
        assert (A.argmax(-1) == att.pattern.argmax(-1)).all()
    again = argmax_patterns(argmax_surrogate(sur))
    for a, b in zip(again, argmax_patterns(sur), strict=True):
        torch.testing.assert_close(a, b)


def test_all_paths_kept_without_rank_filter(sur):
    answer = int(sur.logits[-1].argmax())
    tgt = Target.logit(answer)
    res = argmax_trace(sur, tgt, threshold_rank=TINY_VOCAB, max_paths=10**5, beam=10**5)
    assert len(res.paths) == res.n_enumerated > 0
    # each path's value is the answer entry of its logit vector, so the kept sum matches
    assert sum(p.value for p in res.paths) == pytest.approx(res.answer_logit_kept, rel=1e-4)
    # all argmax paths = the argmax surrogate's unbiased logit; differs from the real (exact) logit
    g = compute_graph(argmax_surrogate(sur), tgt, with_bias=False)
    assert res.answer_logit_kept == pytest.approx(g.value, rel=1e-4)
    assert res.cosine == pytest.approx(res.cosine_all) and -1 <= res.cosine <= 1 and res.norm_ratio > 0
    assert res.answer_logit_real == pytest.approx(compute_graph(sur, tgt).real)


def test_rank_filter(sur):
    answer = int(sur.logits[-1].argmax())
    res = argmax_trace(sur, Target.logit(answer), threshold_rank=5, max_paths=10**5, beam=10**5)
    assert all(r < 5 for r in res.ranks) and len(res.ranks) == len(res.paths) <= res.n_enumerated
    d = res.to_dict()
    assert d["n_kept"] == len(res.paths) and all("text" in p for p in d["paths"])
    only_start = argmax_trace(sur, Target.logit(answer), threshold_rank=TINY_VOCAB, start_pos=2, end_pos=2)
    assert {p.pos for p in only_start.paths} <= {2}
