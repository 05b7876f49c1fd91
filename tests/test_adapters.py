"""The adapter's vocabulary against independent read-outs of the HF model, on every architecture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ivlens.models.adapters import UnsupportedArchitectureError, get_adapter
from ivlens.testing.tiny import tiny_model

IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 31]])


@pytest.mark.parametrize(("arch", "kv"), [("olmo2", None), ("olmo2", 2), ("llama", None), ("llama", 2),
                                        ("qwen2", None), ("qwen2", 1), ("gpt2", None)])
def test_resid_readout_matches_hidden_states(arch, kv):
    """resid_post[l] from forward hooks equals HF hidden_states[l+1] for l < L-1, and the last layer's
    output through the final norm equals hidden_states[L] (transformers 5 puts the final norm there).
    MHA, GQA and (Qwen2 with one KV head) MQA."""
    model = tiny_model(arch, n_kv_heads=kv)
    ad = get_adapter(model)
    with torch.no_grad(), ad.capture_resid() as cache:
        out = model(IDS, output_hidden_states=True)
    hs = out.hidden_states
    assert len(cache) == ad.n_layers == len(hs) - 1
    for layer in range(ad.n_layers - 1):
        torch.testing.assert_close(cache[layer], hs[layer + 1], rtol=0, atol=1e-6)
    torch.testing.assert_close(ad.final_norm(cache[ad.n_layers - 1]), hs[-1], rtol=1e-5, atol=1e-5)
    logits = ad.unembed(hs[-1])
    torch.testing.assert_close(logits, out.logits, rtol=1e-5, atol=1e-5)


def _inputs(module: nn.Module, model, ids):
    got = {}
    h = module.register_forward_hook(lambda m, i, o: got.update(inp=i[0], out=o))
    with torch.no_grad():
        model(ids)
    h.remove()
    return got["inp"], got["out"]


def test_attention_params_reproduce_projections(arch):
    model = tiny_model(arch, n_kv_heads=None if arch == "gpt2" else 2)
    ad = get_adapter(model)
    p = ad.attention_params(1)
    H, KV, dh = ad.n_heads, ad.n_kv_heads, ad.d_head
    z, o = _inputs(ad.o_proj(1), model, IDS)  # o_proj input = concatenated head outputs [1, pos, H*dh]
    zh = z.view(1, -1, H, dh)
    recon = torch.einsum("hdk,bphk->bpd", p.W_O, zh) + (p.b_O if p.b_O is not None else 0)
    torch.testing.assert_close(recon, o, rtol=1e-5, atol=1e-5)
    # the value projection: v = W_V x + b_V on the attention's input
    if ad.spec.qkv:
        x, qkv = _inputs(model.transformer.h[1].attn.c_attn, model, IDS)
        v = qkv[..., 2 * H * dh:]
    else:
        x, v = _inputs(ad.layer(1).self_attn.v_proj, model, IDS)
    v_ref = torch.einsum("kdm,bpm->bpkd", p.W_V, x) + (p.b_V if p.b_V is not None else 0)
    torch.testing.assert_close(v_ref.reshape(1, -1, KV * dh), v, rtol=1e-5, atol=1e-5)
    assert p.W_Q.shape == (H, dh, ad.d_model) and p.W_K.shape == (KV, dh, ad.d_model)


def test_mlp_params_reproduce_mlp(arch):
    model = tiny_model(arch)
    ad = get_adapter(model)
    p = ad.mlp_params(2)
    x, y = _inputs(ad.mlp(2), model, IDS)
    u = x @ p.W_in.T + (p.b_in if p.b_in is not None else 0)
    if p.kind == "gated":
        g = p.act(x @ p.W_gate.T + (p.b_gate if p.b_gate is not None else 0))
        h = g * u
    else:
        h = p.act(u)
    torch.testing.assert_close(h @ p.W_out.T + (p.b_out if p.b_out is not None else 0), y, rtol=1e-5, atol=1e-5)


def test_norms_by_role_reproduce_modules(arch):
    model = tiny_model(arch)
    ad = get_adapter(model)
    expected_roles = {"olmo2": {"attn_out", "mlp_out"}, "llama": {"attn_in", "mlp_in"},
                      "qwen2": {"attn_in", "mlp_in"}, "gpt2": {"attn_in", "mlp_in"}}[arch]
    roles = {r for r in ("attn_in", "attn_out", "mlp_in", "mlp_out") if ad.norm(0, r) is not None}
    assert roles == expected_roles
    assert ad.norm_placement == ("post" if arch == "olmo2" else "pre")
    for role in roles:
        n = ad.norm(0, role)
        x, y = _inputs(n.module, model, IDS)
        xc = x - x.mean(-1, keepdim=True) if n.kind == "layer" else x
        ref = n.weight * xc / n.scale(x) + (n.bias if n.bias is not None else 0)
        torch.testing.assert_close(ref, y, rtol=1e-5, atol=1e-5)


def test_adapter_chosen_by_class_not_name():
    model = tiny_model("llama")
    model.config.name_or_path = "my-olmo2-gpt2-finetune"  # a misleading name changes nothing
    assert get_adapter(model).spec.name == "llama"

    class MyLlama(type(model)):
        pass

    sub = MyLlama(model.config)
    assert get_adapter(sub).spec.name == "llama"  # subclasses of a supported class are supported


def test_unsupported_architecture_error_names_the_fix():
    class Weird(nn.Module):
        pass

    with pytest.raises(UnsupportedArchitectureError) as e:
        get_adapter(Weird())
    msg = str(e.value)
    assert "Weird" in msg and "ARCHITECTURES" in msg and "Olmo2ForCausalLM" in msg
