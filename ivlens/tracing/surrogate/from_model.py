"""Building the frozen linear surrogate from an HF model: one forward pass with hooks (through the architecture
adapter) records every norm's input, attention pattern and MLP input; each non-linear factor is then frozen at its
recorded value (:func:`build_surrogate`). The maths of the frozen map: :mod:`ivlens.tracing.surrogate.frozen_map`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ivlens.models.adapters import (
    ArchitectureAdapter,
    NormParams,
    UnsupportedArchitectureError,
    get_adapter,
)

from .frozen_map import FrozenAttention, FrozenMLP, FrozenNorm, Surrogate, TracingError


def _affine(norm: FrozenNorm | None, x: Tensor) -> Tensor:
    """The frozen norm applied to a constant ``x: [pos, d]``, bias included (identity without a norm)."""
    if norm is None:
        return x
    out = norm.apply(x)
    return out + norm.bias if norm.bias is not None else out


@contextmanager
def eager_attention(model) -> Iterator[None]:
    """Switch the model to eager attention (the only implementation that returns patterns), then back."""
    before = getattr(model.config, "_attn_implementation", None)
    if before == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def _freeze_norm(params: NormParams | None, x: Tensor | None, dtype: torch.dtype) -> FrozenNorm | None:
    if params is None:
        return None
    if x is None:
        raise TracingError(f"the norm {type(params.module).__name__} did not run during the forward pass")
    return FrozenNorm(
        weight=params.weight.detach().to(dtype).cpu(),
        bias=None if params.bias is None else params.bias.detach().to(dtype).cpu(),
        inv_scale=(1.0 / params.scale(x.cpu())).squeeze(-1).to(dtype),
        center=params.kind == "layer",
    )


def _slope_at_zero(act, dtype: torch.dtype) -> float:
    """``act'(0)`` by a central difference in float64 (0.5 for GELU/SiLU-like activations)."""
    h = torch.tensor([1e-4, -1e-4], dtype=torch.float64)
    y = act(h)
    return float((y[0] - y[1]) / 2e-4)


def plain_slope(act, u: Tensor) -> Tensor:
    """``act(u)/u`` elementwise, with its limit ``act'(0)`` where ``|u| < 1e-6``: ``u: [...] → [...]``."""
    small = u.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(u), u)
    return torch.where(small, torch.full_like(u, _slope_at_zero(act, u.dtype)), act(u) / safe)


@dataclass
class _Recorder:
    """Forward hooks recording what the surrogate freezes (batch row 0, fp32)."""

    adapter: ArchitectureAdapter
    inputs: dict[object, Tensor] = field(default_factory=dict)
    patterns: dict[int, Tensor] = field(default_factory=dict)
    handles: list = field(default_factory=list)

    def _record_input(self, key, module) -> None:
        def hook(_mod, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states")
            self.inputs[key] = x[0].detach().float()
        self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def __enter__(self) -> _Recorder:
        ad = self.adapter
        self._record_input("layer0", ad.layer(0))
        self._record_input("final", ad.final_norm)
        if ad.final_logit_softcap is not None:  # the logits before the cap
            def unembed_hook(_mod, _args, out):
                self.inputs["pre_logits"] = out[0].detach().float()
            self.handles.append(ad.unembed.register_forward_hook(unembed_hook))
        for l in range(ad.n_layers):  # noqa: E741
            for role in ("attn_in", "attn_out", "mlp_in", "mlp_out"):
                p = ad.norm(l, role)
                if p is not None:
                    self._record_input((l, role), p.module)
            self._record_input((l, "mlp"), ad.mlp(l))
            if ad.qkv_clip is not None:  # the clamp's masks need the projections' real input
                self._record_input((l, "attn"), ad.attn(l))

            def attn_hook(_mod, _args, out, l=l):  # noqa: E741
                w = out[1] if isinstance(out, tuple) and len(out) > 1 else None
                if w is None:
                    raise TracingError(f"layer {l}'s attention returned no pattern; the tracer needs eager attention")
                self.patterns[l] = w[0].detach().float()
            self.handles.append(ad.attn(l).register_forward_hook(attn_hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


def _check_supported(adapter: ArchitectureAdapter) -> None:
    spec = adapter.spec
    if spec.norm_kind not in ("rms", "layer"):
        raise UnsupportedArchitectureError(f"the tracer cannot freeze norms of kind {spec.norm_kind!r}")
    if spec.mlp_kind not in ("gated", "plain"):
        raise UnsupportedArchitectureError(f"the tracer cannot freeze MLPs of kind {spec.mlp_kind!r}")


def _value_clamp(ap, n: Tensor, clip: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """OLMo-1's ``clip_qkv`` on the values, frozen: ``(mask, clamped)``, each ``[kv_head, pos, d_head]``.

    ``n: [pos, d_model]`` is the attention module's real input; ``v = W_V n + b_V`` is clamped to ``[−clip, clip]``,
    so ``mask`` is 1 where it was not (the linear map passes) and ``clamped`` the value where it was.
    """
    v = torch.einsum("jkd,sd->jsk", ap.W_V.detach().to(dtype).cpu(), n.to(dtype))  # [kv_head, pos, d_head]
    if ap.b_V is not None:
        v = v + ap.b_V.detach().to(dtype).cpu()[:, None]
    mask = ((v >= -clip) & (v <= clip)).to(dtype)
    return mask, v.clamp(-clip, clip)


@torch.no_grad()
def build_surrogate(model, input_ids, adapter: ArchitectureAdapter | None = None,
                    dtype: torch.dtype = torch.float32, tokenizer=None) -> Surrogate:
    """Run ``model`` once on ``input_ids`` (``[pos]`` or ``[1, pos]``) and freeze it into a :class:`Surrogate`.

    The maths runs in ``dtype`` on the CPU (fp32 by default; the model may be bf16, and on a GPU). What the
    adapter describes is folded in: the embedding scale into the embedding source, the value clamp into a mask and
    constants, the parallel residual into the state layout, a final soft-cap into the target
    (:func:`logit_slopes`). Raises
    :class:`~ivlens.models.adapters.UnsupportedArchitectureError` for a model without an adapter, and
    :class:`TracingError` where the frozen map would not reproduce the model (embeddings transformed before
    the first layer in a way the adapter does not describe).
    """
    adapter = adapter or get_adapter(model)
    _check_supported(adapter)
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1)
    device = adapter.embed.weight.device
    with eager_attention(model), _Recorder(adapter) as rec, adapter.capture_resid() as resid:
        logits = model(input_ids=ids.to(device)).logits[0].detach().float().cpu()
    real_resid = torch.stack([resid[l][0].float().cpu() for l in range(adapter.n_layers)])  # noqa: E741

    def cast(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.detach().to(dtype)

    inp = {k: v.cpu() for k, v in rec.inputs.items()}
    pos_ids = torch.arange(ids.shape[1])
    w_emb = adapter.embed.weight
    embed = w_emb[ids[0].to(device)].detach()
    if adapter.embed_scale is not None:  # in the weight's dtype, as the model multiplies
        embed = embed * torch.tensor(adapter.embed_scale, dtype=w_emb.dtype, device=device)
    embed = embed.to(dtype).cpu()
    pe = adapter.pos_embed
    pos_embed = None if pe is None else pe.weight[pos_ids.to(device)].detach().to(dtype).cpu()
    x0 = embed if pos_embed is None else embed + pos_embed
    err = (x0.float() - inp["layer0"]).abs().max().item()
    if err > 1e-3 * (1 + inp["layer0"].abs().max().item()):
        raise TracingError(
            f"the first layer's input differs from the embeddings by {err:.3g}: this model transforms its "
            f"embeddings before layer 0 (scaling other than the adapter's embed_scale {adapter.embed_scale}, "
            "dropout in train mode?), which the adapter does not describe. Call model.eval(), or extend the "
            "adapter with the embedding transform.")

    attn, mlps = [], []
    clip = adapter.qkv_clip
    for l in range(adapter.n_layers):  # noqa: E741
        norms = {r: _freeze_norm(adapter.norm(l, r), inp.get((l, r)), dtype)
                 for r in ("attn_in", "attn_out", "mlp_in", "mlp_out")}
        # ---- attention
        ap = adapter.attention_params(l)
        A = rec.patterns[l].to(dtype).cpu()  # [head, pos, pos]
        W_V, W_O = cast(ap.W_V).cpu(), cast(ap.W_O).cpu()
        T, d = embed.shape
        # constant per KV head and position written through V: W_V b_norm_in + b_V  -> [kv_head, pos, d_head]
        cv = torch.zeros(W_V.shape[:2], dtype=dtype)
        if norms["attn_in"] is not None and norms["attn_in"].bias is not None:
            cv = cv + W_V @ norms["attn_in"].bias
        if ap.b_V is not None:
            cv = cv + cast(ap.b_V).cpu()
        cv = cv[:, None].expand(-1, T, -1)
        v_mask = None
        if clip is not None:  # clamped entries: a constant; the others keep the linear map and its constant
            v_mask, clamped = _value_clamp(ap, inp[(l, "attn")], clip, dtype)
            cv = torch.where(v_mask.bool(), cv, clamped)
        cv = cv.repeat_interleave(adapter.group_size, dim=0)  # [head, pos, d_head]
        b_attn = torch.einsum("hdk,htk->td", W_O, torch.einsum("hts,hsk->htk", A, cv))  # [pos, d_model]
        if ap.b_O is not None:
            b_attn = b_attn + cast(ap.b_O).cpu()
        b_attn = _affine(norms["attn_out"], b_attn)
        attn.append(FrozenAttention(A, W_V, W_O, adapter.group_size, norms["attn_in"], norms["attn_out"], b_attn,
                                    v_mask))
        # ---- MLP: n is the MLP module's real input (already normed in pre-norm architectures)
        mp = adapter.mlp_params(l)
        n = inp[(l, "mlp")].to(dtype)  # [pos, d_model]
        W_in, W_out = cast(mp.W_in).cpu(), cast(mp.W_out).cpu()
        b_in = torch.zeros(W_in.shape[0], dtype=dtype) if mp.b_in is None else cast(mp.b_in).cpu()
        if mp.kind == "gated":
            gate = n @ cast(mp.W_gate).cpu().T
            if mp.b_gate is not None:
                gate = gate + cast(mp.b_gate).cpu()
            slope = mp.act(gate)
        else:
            slope = plain_slope(mp.act, n @ W_in.T + b_in)
        c_in = b_in if norms["mlp_in"] is None or norms["mlp_in"].bias is None else W_in @ norms["mlp_in"].bias + b_in
        b_mlp = (slope * c_in) @ W_out.T  # [pos, d_model]
        if mp.b_out is not None:
            b_mlp = b_mlp + cast(mp.b_out).cpu()
        b_mlp = _affine(norms["mlp_out"], b_mlp)
        mlps.append(FrozenMLP(W_in, W_out, slope, norms["mlp_in"], norms["mlp_out"], b_mlp))

    final = _freeze_norm(adapter.final_norm_params(), inp.get("final"), dtype)
    W_U = cast(adapter.unembed.weight).cpu()
    b_U = cast(getattr(adapter.unembed, "bias", None))
    tokens = tuple(tokenizer.convert_ids_to_tokens(ids[0].tolist())) if tokenizer is not None else ()
    cap = adapter.final_logit_softcap
    return Surrogate(ids[0], embed, pos_embed, tuple(attn), tuple(mlps), final, W_U,
                     None if b_U is None else b_U.cpu(), logits, adapter.spec.name, tokens,
                     parallel=bool(adapter.parallel_residual), final_softcap=None if cap is None else float(cap),
                     pre_logits=inp.get("pre_logits"), real_resid=real_resid)
