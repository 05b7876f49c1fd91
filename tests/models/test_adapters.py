"""The adapter's vocabulary against independent read-outs of the HF model, on a tiny random model of every family.

Each test recomputes something the HF module computes (a norm, an attention layer with its soft-cap, clip, partial
rotary and sliding window, an MLP, the residual stream, the logits) from what the adapter hands out, and compares.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ivlens.models.adapters import (
    ARCHITECTURES,
    Family,
    UnsupportedArchitectureError,
    derive_spec,
    find_decoder_layers,
    get_adapter,
)
from ivlens.testing.tiny import ARCHS, TINY_WINDOW, tiny_model

IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 31]])  # 8 tokens: longer than every tiny sliding window
MHA_ONLY = ("gpt2", "gpt_neox")
#: (arch, n_kv_heads): MHA everywhere, GQA and MQA where the family allows them.
KV_CASES = [(a, kv) for a in ARCHS for kv in ((None,) if a in MHA_ONLY else (None, 2, 1))]

EXPECTED_ROLES = {
    "pre": {"attn_in", "mlp_in"}, "post": {"attn_out", "mlp_out"},
    "sandwich": {"attn_in", "attn_out", "mlp_in", "mlp_out"},
}
PLACEMENT = {"olmo2": "post", "olmo3": "post", "gemma2": "sandwich", "gemma3": "sandwich"}


def _kv(arch: str) -> int | None:
    return None if arch in MHA_ONLY else 2


@pytest.mark.parametrize(("arch", "kv"), KV_CASES)
def test_resid_readout_matches_hidden_states(arch, kv):
    """resid_post[l] from forward hooks equals HF hidden_states[l+1] for l < L-1; the embedding entering layer 0
    (embed_input: Gemma's scale, GPT-2's positions) equals hidden_states[0]; and adapter.logits of the last layer's
    output equals the model's logits (final norm, unembedding and Gemma-2's final soft-cap)."""
    model = tiny_model(arch, n_kv_heads=kv)
    ad = get_adapter(model)
    assert (ad.n_kv_heads, ad.group_size) == ((kv, ad.n_heads // kv) if kv else (ad.n_heads, 1))
    with torch.no_grad(), ad.capture_resid() as cache:
        out = model(IDS, output_hidden_states=True)
    hs = out.hidden_states
    assert len(cache) == ad.n_layers == len(hs) - 1
    pos = torch.arange(IDS.shape[1])[None]
    with torch.no_grad():
        torch.testing.assert_close(ad.embed_input(IDS, pos), hs[0], rtol=0, atol=0)
        for layer in range(ad.n_layers - 1):
            torch.testing.assert_close(cache[layer], hs[layer + 1], rtol=0, atol=1e-6)
        torch.testing.assert_close(ad.final_norm(cache[ad.n_layers - 1]), hs[-1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ad.logits(cache[ad.n_layers - 1]), out.logits, rtol=1e-5, atol=1e-5)


def test_embed_scale(arch):
    """embed_scale is the factor between embed.weight[id] and the embedding entering layer 0 (Gemma: √d_model)."""
    model = tiny_model(arch)
    ad = get_adapter(model)
    if arch.startswith("gemma"):
        assert ad.embed_scale == pytest.approx(ad.d_model ** 0.5)
    else:
        assert ad.embed_scale is None
    if ad.pos_embed is None:
        with torch.no_grad():
            want = ad.embed_input(IDS, torch.arange(IDS.shape[1])[None])
        torch.testing.assert_close(ad.embed.weight[IDS] * (ad.embed_scale or 1.0), want, rtol=1e-6, atol=0)


def _io(module: nn.Module, model, ids, kwargs_name: str = "hidden_states"):
    """(first input, output) of ``module`` in one forward of ``model``; inputs are cloned before the module runs
    (OLMo-1 clamps its projections' outputs in place)."""
    got = {}

    def pre(_m, args, kwargs):
        got["inp"] = (args[0] if args else kwargs[kwargs_name]).clone()

    def post(_m, _a, _k, out):
        got["out"] = (out[0] if isinstance(out, tuple) else out).clone()

    hs = [module.register_forward_pre_hook(pre, with_kwargs=True), module.register_forward_hook(post, with_kwargs=True)]
    with torch.no_grad():
        model(ids)
    for h in hs:
        h.remove()
    return got["inp"], got["out"]


def _rotate(x, cos, sin):
    """HF's rotate-half rotary on the first ``cos.shape[-1]`` dims of ``x: [head, pos, d_head]``."""
    r = cos.shape[-1]
    xr, xp = x[..., :r], x[..., r:]
    half = torch.cat([-xr[..., r // 2:], xr[..., : r // 2]], dim=-1)
    return torch.cat([xr * cos + half * sin, xp], dim=-1)


def _attention_reference(ad, layer: int, x: torch.Tensor) -> torch.Tensor:
    """The attention sublayer's output ``[pos, d_model]`` for its input ``x: [pos, d_model]`` (one unpadded prompt),
    written out from the adapter's parameters and constants only."""
    p = ad.attention_params(layer)
    T, H, KV, dh = x.shape[0], ad.n_heads, ad.n_kv_heads, ad.d_head
    q = torch.einsum("hkd,pd->hpk", p.W_Q, x) + (p.b_Q[:, None] if p.b_Q is not None else 0)  # [head, pos, d_head]
    k = torch.einsum("hkd,pd->hpk", p.W_K, x) + (p.b_K[:, None] if p.b_K is not None else 0)  # [kv_head, pos, d_head]
    v = torch.einsum("hkd,pd->hpk", p.W_V, x) + (p.b_V[:, None] if p.b_V is not None else 0)
    if ad.qkv_clip is not None:
        q, k, v = (t.clamp(-ad.qkv_clip, ad.qkv_clip) for t in (q, k, v))
    norms = ad.qk_norms(layer)
    if norms is not None:
        qn, kn = norms
        if ad.spec.qk_norm_scope == "full":  # over the whole projection: [pos, head · d_head]
            q = qn.apply(q.permute(1, 0, 2).reshape(T, H * dh)).reshape(T, H, dh).permute(1, 0, 2)
            k = kn.apply(k.permute(1, 0, 2).reshape(T, KV * dh)).reshape(T, KV, dh).permute(1, 0, 2)
        else:
            q, k = qn.apply(q), kn.apply(k)
    if ad.rotary_dims:
        cos, sin = ad.position_embeddings(x[None], torch.arange(T)[None], layer)
        assert cos.shape[-1] == ad.rotary_dims
        q, k = _rotate(q, cos[0], sin[0]), _rotate(k, cos[0], sin[0])
    k, v = k.repeat_interleave(ad.group_size, 0), v.repeat_interleave(ad.group_size, 0)
    s = torch.einsum("hqk,hsk->hqs", q, k) * ad.attention_scale(layer)  # [head, pos, pos]
    if ad.attn_logit_softcap is not None:
        s = torch.tanh(s / ad.attn_logit_softcap) * ad.attn_logit_softcap
    qi, ki = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = ki <= qi
    window = ad.sliding_window(layer)
    if window is not None:
        allowed &= ki > qi - window
    A = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1)
    z = torch.einsum("hqs,hsk->hqk", A, v)  # [head, pos, d_head]
    return torch.einsum("hdk,hqk->qd", p.W_O, z) + (p.b_O if p.b_O is not None else 0)


def test_attention_params_reproduce_attention(arch):
    """Every layer's attention output (sliding and full layers) from the adapter's weights (fused layouts split),
    QK-norms and their scope, partial rotary, scale, score soft-cap and qkv clip, against HF's module."""
    model = tiny_model(arch, n_kv_heads=_kv(arch))
    ad = get_adapter(model)
    windows = set()
    for layer in range(ad.n_layers):
        x, y = _io(ad.attn(layer), model, IDS)
        with torch.no_grad():
            got = _attention_reference(ad, layer, x[0])
        torch.testing.assert_close(got, y[0], rtol=1e-5, atol=1e-5)
        windows.add(ad.sliding_window(layer))
        p = ad.attention_params(layer)
        assert p.W_Q.shape == (ad.n_heads, ad.d_head, ad.d_model)
        assert p.W_K.shape == p.W_V.shape == (ad.n_kv_heads, ad.d_head, ad.d_model)
        assert p.W_O.shape == (ad.n_heads, ad.d_model, ad.d_head)
    want = {"mistral": {TINY_WINDOW}, "starcoder2": {TINY_WINDOW}, "gemma2": {None, TINY_WINDOW}, "gemma3": {None, TINY_WINDOW},
            "olmo3": {None, TINY_WINDOW}, "qwen3": {None, TINY_WINDOW}}.get(arch, {None})
    assert windows == want


def test_family_constants(arch):
    """The contract's constants read what HF's modules use."""
    model = tiny_model(arch)
    ad = get_adapter(model)
    cfg = model.config
    assert ad.parallel_residual == (arch == "gpt_neox")
    assert ad.final_logit_softcap == (0.5 if arch == "gemma2" else None)
    assert ad.attn_logit_softcap == (0.05 if arch == "gemma2" else None)
    assert ad.qkv_clip == (0.2 if arch == "olmo" else None)
    want_scale = (cfg.query_pre_attn_scalar ** -0.5 if arch in ("gemma2", "gemma3") else ad.d_head ** -0.5)
    assert ad.attn_scale == pytest.approx(want_scale)
    want_rot = {"gpt2": 0, "phi3": ad.d_head // 2, "gpt_neox": ad.d_head // 2}.get(arch, ad.d_head)
    assert ad.rotary_dims == want_rot
    if arch in ("gemma", "qwen3"):  # explicit head_dim, not d_model / n_heads
        assert ad.d_head == cfg.head_dim != ad.d_model // ad.n_heads


def test_mlp_params_reproduce_mlp(arch):
    model = tiny_model(arch)
    ad = get_adapter(model)
    p = ad.mlp_params(2)
    x, y = _io(ad.mlp(2), model, IDS)
    u = x @ p.W_in.T + (p.b_in if p.b_in is not None else 0)
    if p.kind == "gated":
        g = p.act(x @ p.W_gate.T + (p.b_gate if p.b_gate is not None else 0))
        h = g * u
    else:
        h = p.act(u)
    assert p.W_in.shape == (ad.d_mlp, ad.d_model) and p.W_out.shape == (ad.d_model, ad.d_mlp)
    torch.testing.assert_close(h @ p.W_out.T + (p.b_out if p.b_out is not None else 0), y, rtol=1e-5, atol=1e-5)


def test_norms_by_role_reproduce_modules(arch):
    """Roles and placement per family; every norm (block, QK, final) written out from its effective weight."""
    model = tiny_model(arch)
    ad = get_adapter(model)
    placement = PLACEMENT.get(arch, "pre")
    roles = {r for r in ("attn_in", "attn_out", "mlp_in", "mlp_out") if ad.norm(0, r) is not None}
    assert roles == EXPECTED_ROLES[placement]
    assert ad.norm_placement == placement
    params = [ad.norm(1, r) for r in roles] + [ad.final_norm_params()] + list(ad.qk_norms(1) or ())
    assert (ad.qk_norms(1) is not None) == (arch in ("olmo2", "olmo3", "qwen3", "gemma3"))
    for n in params:
        x, y = _io(n.module, model, IDS)
        torch.testing.assert_close(n.apply(x), y.float(), rtol=1e-5, atol=1e-5)
        assert n.kind == ("layer" if arch in ("gpt2", "gpt_neox", "olmo", "starcoder2") else "rms")
        if arch.startswith("gemma"):  # effective weight 1 + w
            torch.testing.assert_close(n.weight, 1 + n.module.weight.float())
            assert n.offset == 1.0
        if arch == "olmo":  # non-parametric LayerNorm
            assert torch.equal(n.weight, torch.ones(ad.d_model)) and n.bias is None


def test_derived_specs_equal_the_former_explicit_ones():
    """The derivation reproduces the hand-written specs ivlens had for its first four architectures."""
    want = {
        "olmo2": dict(layers="model.layers", embed="model.embed_tokens", final_norm="model.norm", unembed="lm_head",
                      attn="self_attn", q="self_attn.q_proj", o="self_attn.o_proj", q_norm="self_attn.q_norm",
                      qk_norm_scope="full", norm_kind="rms", mlp_kind="gated", mlp_gate="mlp.gate_proj",
                      mlp_in="mlp.up_proj", mlp_out="mlp.down_proj", rotary_emb="model.rotary_emb",
                      norms={"attn_out": "post_attention_layernorm", "mlp_out": "post_feedforward_layernorm"}),
        "llama": dict(layers="model.layers", norms={"attn_in": "input_layernorm", "mlp_in": "post_attention_layernorm"},
                      q_norm=None, mlp_kind="gated"),
        "gpt2": dict(layers="transformer.h", embed="transformer.wte", pos_embed="transformer.wpe", rotary=False,
                     final_norm="transformer.ln_f", qkv="attn.c_attn", o="attn.c_proj", conv1d=True, norm_kind="layer",
                     norms={"attn_in": "ln_1", "mlp_in": "ln_2"}, mlp_kind="plain", mlp_in="mlp.c_fc",
                     mlp_out="mlp.c_proj"),
    }
    for arch, fields in want.items():
        spec = get_adapter(tiny_model(arch)).spec
        assert {k: getattr(spec, k) for k in fields} == fields


def test_adapter_chosen_by_class_not_name():
    model = tiny_model("llama")
    model.config.name_or_path = "my-olmo2-gpt2-finetune"  # a misleading name changes nothing
    assert get_adapter(model).spec.name == "llama"

    class MyLlama(type(model)):
        pass

    sub = MyLlama(model.config)
    assert get_adapter(sub).spec.name == "llama"  # subclasses of a supported class are supported
    assert all(isinstance(k, str) and k.endswith(("ForCausalLM", "LMHeadModel")) for k in ARCHITECTURES)


def _stablelm():
    from transformers import StableLmConfig, StableLmForCausalLM

    cfg = StableLmConfig(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return StableLmForCausalLM(cfg).eval()


def test_unsupported_architecture_error_names_the_fix():
    class Weird(nn.Module):
        pass

    with pytest.raises(UnsupportedArchitectureError) as e:
        get_adapter(Weird())
    msg = str(e.value)
    assert "Weird" in msg and "register" in msg and "Olmo2ForCausalLM" in msg and "FAMILIES" in msg


def test_unregistered_hf_class_derives_but_is_not_guessed():
    """An unregistered HF class gets no adapter (never a guess), but the message says what derivation found; one
    line of data registers it."""
    model = _stablelm()
    with pytest.raises(UnsupportedArchitectureError, match="StableLmForCausalLM.*derives cleanly"):
        get_adapter(model)
    spec = derive_spec(model, Family("stablelm", ("StableLmForCausalLM",)))
    assert spec.norms == {"attn_in": "input_layernorm", "mlp_in": "post_attention_layernorm"}
    assert spec.norm_kind == "layer"
    assert find_decoder_layers(model)[0] == "model.layers"


def test_derivation_names_what_is_missing():
    """A block whose structure the vocabulary does not know fails with the parts it could not find."""
    model = tiny_model("llama")
    for layer in model.model.layers:
        layer.mlp.gate_proj, layer.mlp.wg = None, layer.mlp.gate_proj  # an MLP named outside the vocabulary
        layer.mlp.up_proj, layer.mlp.wu = None, layer.mlp.up_proj
    with pytest.raises(UnsupportedArchitectureError, match="missing the MLP module"):
        derive_spec(model, Family("x", ("LlamaForCausalLM",)))


def test_derivation_leaves_the_model_as_it_was():
    """The probe forward runs in eval mode (dropout off) and restores training mode; no hooks are left behind."""
    model = tiny_model("gpt2")
    model.train()
    ad = get_adapter(model)
    assert ad.spec.norms == {"attn_in": "ln_1", "mlp_in": "ln_2"}
    assert all(m.training for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("multipliers", [dict(residual_multiplier=0.5), dict(embedding_multiplier=2.0),
                                         dict(logits_scaling=4.0)])
def test_derivation_refuses_what_the_vocabulary_cannot_say(multipliers):
    """Granite's block is Llama's plus multipliers: the probe forward sees that the residual, the embedding or the
    logits are scaled otherwise than the adapter would compute them, and the derivation refuses (never a guess)."""
    from transformers import GraniteConfig, GraniteForCausalLM

    cfg = GraniteConfig(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, **{"residual_multiplier": 1.0,
                                                                         "embedding_multiplier": 1.0,
                                                                         "logits_scaling": 1.0, **multipliers})
    model = GraniteForCausalLM(cfg).eval()
    with pytest.raises(UnsupportedArchitectureError, match="cannot derive an adapter for GraniteForCausalLM"):
        derive_spec(model, Family("granite", ("GraniteForCausalLM",)))
    plain = GraniteForCausalLM(GraniteConfig(**{**cfg.to_dict(), "residual_multiplier": 1.0,
                                                "embedding_multiplier": 1.0, "logits_scaling": 1.0})).eval()
    assert derive_spec(plain, Family("granite", ("GraniteForCausalLM",))).norm_kind == "rms"


@pytest.mark.parametrize("arch", ARCHS)
def test_default_init_derives_the_same_spec(arch):
    """Derivation reads the module graph, not the weight values: at transformers' default init (norm weights 1, or
    0 for Gemma's 1 + w; biases 0), where GPT-NeoX's two parallel-residual LayerNorms compute the same function of
    the same input, every family derives the spec of its randomised init."""
    default, randomised = tiny_model(arch, randomise=False), tiny_model(arch)
    norms = [p for n, p in default.named_parameters() if "norm" in n or ".ln_" in n]
    assert all(torch.all(p == p.flatten()[0]) for p in norms)  # really the default init (OLMo-1: no weights)
    fam = ARCHITECTURES[type(default).__name__]
    assert derive_spec(default, fam).to_dict() == derive_spec(randomised, fam).to_dict()


def test_roles_survive_sublayers_that_output_the_same():
    """Weights that make attention and MLP output the same values (here zeros: a pruned or freshly zeroed
    projection) cannot make post-norm roles ambiguous: each module's output carries its own mark in the probe."""
    model = tiny_model("olmo2")
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
    spec = derive_spec(model, ARCHITECTURES["Olmo2ForCausalLM"])
    assert spec.norms == {"attn_out": "post_attention_layernorm", "mlp_out": "post_feedforward_layernorm"}
    assert derive_spec(model, ARCHITECTURES["Olmo2ForCausalLM"]) == get_adapter(tiny_model("olmo2")).spec
