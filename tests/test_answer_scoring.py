"""Answer-level scoring: teacher-forced label log-probabilities, patched and unpatched, against a plain hooked
forward; the metrics on those scores; and the run-time warning about first-token clashes."""

from __future__ import annotations

import math

import patching_reference as ref
import pytest
import torch

from ivlens.models.adapters import get_adapter
from ivlens.patching.engine import (
    RowSpec,
    clean_continuation_logprobs,
    clean_run,
    patched_continuation_logprobs,
    source_vectors,
)
from ivlens.patching.metrics import answer_metrics, continuation_logprobs
from ivlens.testing.tiny import tiny_model

TOL = 1e-4


def _right_aligned(conts: list[tuple[int, ...]]) -> torch.Tensor:
    width = max(len(c) for c in conts)
    return torch.tensor([[-1] * (width - len(c)) + list(c) for c in conts])


@pytest.mark.parametrize("arch", ["olmo2", "llama", "gpt2", "gemma2"])
def test_patched_continuation_logprobs_match_a_hooked_forward(arch):
    model = tiny_model(arch, n_layers=4, d_model=64)
    adapter = get_adapter(model)
    prompts = [(20, 21, 22, 23, 24), (40, 41, 42)]
    conts = [(50,), (51, 52), (53, 54, 55)]
    pairs = [(p, c) for p in prompts for c in conts]  # every prompt with every continuation
    seqs = [p + c[:-1] for p, c in pairs]
    clean = clean_run(adapter, seqs, pad_id=1)
    source = (30, 31, 32)
    ivs = source_vectors(adapter, [source], pad_id=1)
    rows = [RowSpec(b, 0, layers, token) for b, (p, _c) in enumerate(pairs)
            for token in (0, 1, len(p) - 1) for layers in ((0,), (1, 3), (0, 2, 3), (3,))]
    got = patched_continuation_logprobs(adapter, clean, ivs, rows, _right_aligned([c for _p, c in pairs]),
                                        batch_size=3)
    ref_ivs = ref.source_ivs(model, source)
    want = torch.tensor([ref.patched_continuation_logprob(model, pairs[r.target][0], pairs[r.target][1], ref_ivs,
                                                          r.layers, r.token) for r in rows], dtype=torch.float32)
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    # unpatched: the same sum from the clean run
    base = clean_continuation_logprobs(adapter, clean, _right_aligned([c for _p, c in pairs]))
    want_base = torch.tensor([ref.patched_continuation_logprob(model, p, c, ref_ivs, (), 0) for p, c in pairs])
    torch.testing.assert_close(base, want_base.float(), atol=TOL, rtol=0)


def test_a_patch_inside_the_continuation_is_refused():
    model = tiny_model("llama", n_layers=2, d_model=32)
    adapter = get_adapter(model)
    clean = clean_run(adapter, [(20, 21, 50, 51)], pad_id=1)  # prompt (20, 21) + continuation (50, 51, 52)[:-1]
    ivs = source_vectors(adapter, [(30,)], pad_id=1)
    with pytest.raises(ValueError, match="continuation"):
        patched_continuation_logprobs(adapter, clean, ivs, [RowSpec(0, 0, (0,), 2)], torch.tensor([[50, 51, 52]]))


def test_continuation_logprobs_sum_the_label_tokens_only():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [2.0, 0.0, 0.0]]])  # [1 row, tail 2, vocab 3]
    lsm = logits.log_softmax(-1)
    assert continuation_logprobs(logits, torch.tensor([[2, 0]])).item() == pytest.approx(
        (lsm[0, 0, 2] + lsm[0, 1, 0]).item())
    assert continuation_logprobs(logits, torch.tensor([[-1, 1]])).item() == pytest.approx(lsm[0, 1, 1].item())


def test_answer_metrics_rank_the_label_among_the_candidates():
    # candidates: "3", "4" (label space), "big" (another subtask's label)
    scores = torch.tensor([[-1.0, -2.0, -0.5],    # best overall is outside the space; label 0 best in space
                           [-3.0, -1.0, -4.0]])   # label 0 ranks second
    m = answer_metrics(scores, label=torch.tensor([0, 0]), alt=torch.tensor([1, -1]),
                       space=torch.tensor([True, True, False]))
    assert m["rank"].tolist() == [2, 2] and m["top1"].tolist() == [2, 1]
    assert m["ia"].tolist() == [False, True] and m["acc_top1"].tolist() == [False, False]
    assert m["acc_space"].tolist() == [True, False]
    assert m["prob"][0].item() == pytest.approx(math.exp(-1.0))
    assert m["logit_diff"][0].item() == pytest.approx(1.0) and math.isnan(m["logit_diff"][1].item())
