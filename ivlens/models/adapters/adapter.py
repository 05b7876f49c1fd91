"""The architecture adapter: one vocabulary for every causal LM that ivlens patches or traces.

Every analysis speaks of *sites*, never of a model family's module names:

- ``layers``: the decoder blocks, ``n_layers`` of them. The **residual stream after layer l**
  (``resid_post[l]``, shape ``[batch, pos, d_model]``) is the output of block ``l``. Under transformers 5
  a block returns that tensor directly; ``hidden_states[-1]`` of an HF forward is *after* the final norm,
  so never read residuals from ``output_hidden_states``.
- attention: ``q/k/v/o`` projections (fused ones are split by :meth:`attention_params`), ``n_heads`` query heads
  of size ``d_head``, ``n_kv_heads`` key/value heads (grouped-query attention: query head ``h`` reads KV head
  ``h // group_size``); scores ``attn_scale · q·k`` soft-capped at ``attn_logit_softcap`` (Gemma-2); q/k/v clamped
  at ``qkv_clip`` (OLMo-1); rotary on the first ``rotary_dims`` of each head (partial rotary: Phi-3, GPT-NeoX).
- MLP: gated (``down(act(gate(x)) * up(x))``: SwiGLU / GeGLU) or plain (``out(act(in(x)))``: GPT-2, GPT-NeoX).
- norms, and *where they sit* in the block, by role:

  ============  =====================================================  ==========================
  role          meaning                                                 examples
  ============  =====================================================  ==========================
  ``attn_in``   normalises the block input before attention             Llama input_layernorm,
                (pre-norm)                                               GPT-2 ln_1, Gemma-2
  ``attn_out``  normalises the attention output before the residual     OLMo-2 / Gemma-2
                add (post-norm)                                          post_attention_layernorm
  ``mlp_in``    normalises the residual before the MLP (pre-norm)       Llama post_attention_layernorm,
                                                                          Gemma-2 pre_feedforward_layernorm
  ``mlp_out``   normalises the MLP output before the residual add       OLMo-2 / Gemma-2
                                                                          post_feedforward_layernorm
  ============  =====================================================  ==========================

  A sandwich-norm architecture (Gemma-2/3) has all four. QK-norms (``q_norm``/``k_norm``) are separate
  (:meth:`qk_norms`, scope ``full`` over the whole projection or ``head`` per head).
- the block's shape: sequential, ``x + attn(·) → y + mlp(·)``, or ``parallel_residual`` (GPT-NeoX):
  ``x + attn(ln1(x)) + mlp(ln2(x))``, both sublayers reading the block input.
- ``embed`` (token embedding, times ``embed_scale`` on the way in: Gemma's √d_model), ``pos_embed`` (learned
  absolute positions, GPT-2) or rotary positions, ``final_norm``, ``unembed`` (``W_U: [d_vocab, d_model]``)
  and the final logit soft-cap ``final_logit_softcap`` (Gemma-2), applied by :meth:`logits`.

Shape vocabulary used throughout ivlens: ``batch pos d_model layer head kv_head d_head d_mlp d_vocab``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel

from .derive import get_module, layer_type_of, norm_eps, resid_from_output, sliding_window_of, text_config
from .readout import capture_resid
from .spec import (
    ArchitectureSpec,
    AttentionParams,
    MLPParams,
    NormParams,
    NormRole,
    UnsupportedArchitectureError,
)


@dataclass(eq=False)
class ArchitectureAdapter:
    """The vocabulary of one loaded model. Build it with :func:`~.registry.get_adapter`.

    Contract (what the patching engine and the tracer rely on; every architecture difference is behind it):

    - sizes: ``n_layers``, ``d_model``, ``n_heads``, ``n_kv_heads``, ``d_head``, ``group_size``, ``d_mlp``,
      ``d_vocab`` (read from the weights, so an explicit ``head_dim`` is honoured);
    - constants: ``embed_scale: float | None`` (Gemma: √d_model cast to the model dtype as HF does; ``None`` = 1),
      ``parallel_residual: bool``, ``final_logit_softcap`` / ``attn_logit_softcap: float | None``,
      ``attn_scale: float`` (the attention module's own ``scaling``: ``query_pre_attn_scalar**-0.5`` in Gemma-2/3,
      else ``d_head**-0.5``; :meth:`attention_scale` per layer), ``qkv_clip: float | None`` (OLMo-1),
      ``rotary_dims: int`` (0 without rotary), ``norm_placement``;
    - parameters: :meth:`norm` by role, :meth:`final_norm_params`, :meth:`qk_norms` (effective weights, see
      :class:`NormParams`), :meth:`attention_params` (fused layouts split), :meth:`mlp_params` (fused gate_up
      split);
    - execution: :meth:`embed_input` (embedding scale and learned positions applied), :meth:`run_layer`,
      :meth:`layer_mask` (sliding windows), :meth:`position_embeddings` (per-layer-type rotary bases),
      :meth:`logits` (final norm, unembedding, final soft-cap: the model's real logits).

    >>> adapter = get_adapter(model)
    >>> adapter.n_layers, adapter.n_heads, adapter.d_head, adapter.spec.norms
    """

    model: PreTrainedModel
    spec: ArchitectureSpec
    _layers: nn.ModuleList = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._layers = get_module(self.model, self.spec.layers)

    # ----------------------------------------------------------------- sizes
    @property
    def config(self):
        """The decoder's config (the text config of a multimodal model)."""
        return text_config(self.model)

    @property
    def n_layers(self) -> int:
        return len(self._layers)

    @property
    def d_model(self) -> int:
        return self.embed.weight.shape[1]

    @property
    def n_heads(self) -> int:
        c = self.config
        return getattr(c, "num_attention_heads", None) or c.n_head

    @cached_property
    def n_kv_heads(self) -> int:
        if self.spec.k:
            return self._linear(get_module(self._layers[0], self.spec.k))[0].shape[0] // self.d_head
        return getattr(self.config, "num_key_value_heads", None) or self.n_heads

    @cached_property
    def d_head(self) -> int:
        blk, H = self._layers[0], self.n_heads
        if self.spec.q:
            return self._linear(get_module(blk, self.spec.q))[0].shape[0] // H
        rows = self._linear(get_module(blk, self.spec.qkv))[0].shape[0]
        if self.spec.qkv_layout == "per_head":
            return rows // (3 * H)
        kv = getattr(self.config, "num_key_value_heads", None) or H
        return rows // (H + 2 * kv)

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 for multi-head attention)."""
        return self.n_heads // self.n_kv_heads

    @property
    def d_mlp(self) -> int:
        return self.mlp_params(0).W_in.shape[0]

    @property
    def d_vocab(self) -> int:
        return self.unembed.weight.shape[0]

    @property
    def norm_placement(self) -> Literal["pre", "post", "sandwich"]:
        has_in = any(r in self.spec.norms for r in ("attn_in", "mlp_in"))
        has_out = any(r in self.spec.norms for r in ("attn_out", "mlp_out"))
        return "sandwich" if has_in and has_out else ("pre" if has_in else "post")

    # -------------------------------------------------------------- constants
    @property
    def parallel_residual(self) -> bool:
        """Attention and MLP read the same block input: ``x + attn(ln1(x)) + mlp(ln2(x))`` (GPT-NeoX)."""
        return self.spec.parallel_residual

    @property
    def embed_scale(self) -> float | None:
        """Factor between ``embed.weight[id]`` and the embedding entering layer 0 (Gemma: √d_model cast to the
        model dtype, as HF's scaled embedding module computes it); ``None`` where there is none."""
        scale = getattr(self.embed, "embed_scale", None)
        if scale is None:
            return None
        return float(torch.as_tensor(scale).to(self.embed.weight.dtype))

    @property
    def final_logit_softcap(self) -> float | None:
        """``c`` of the final logits' soft-cap ``c · tanh(z / c)`` (Gemma-2), applied by :meth:`logits`."""
        return getattr(self.config, "final_logit_softcapping", None)

    @property
    def attn_logit_softcap(self) -> float | None:
        """``c`` of the attention scores' soft-cap ``c · tanh(s / c)`` (after ``attn_scale``; Gemma-2)."""
        return getattr(self.config, "attn_logit_softcapping", None)

    def attention_scale(self, l: int) -> float:  # noqa: E741
        """The factor on ``q · k`` in layer ``l``: the attention module's ``scaling`` (``d_head**-0.5`` if it has
        none)."""
        scaling = getattr(self.attn(l), "scaling", None)
        return float(scaling) if scaling is not None else self.d_head ** -0.5

    @property
    def attn_scale(self) -> float:
        """:meth:`attention_scale` of layer 0 (the same in every layer except GPT-2 with
        ``scale_attn_by_inverse_layer_idx``)."""
        return self.attention_scale(0)

    @property
    def qkv_clip(self) -> float | None:
        """OLMo-1's ``clip_qkv``: q, k and v are clamped to ``[-c, c]`` after their projections."""
        return getattr(self.config, "clip_qkv", None)

    @cached_property
    def rotary_dims(self) -> int:
        """Dimensions of each head that rotary embeddings rotate (the first ``rotary_dims``; ``d_head`` unless
        partial rotary, 0 without rotary)."""
        if not self.spec.rotary_emb:
            return 0
        x = self.embed.weight[:1][None]
        cos, _ = self.position_embeddings(x, torch.zeros(1, 1, dtype=torch.long, device=x.device), 0)
        return int(cos.shape[-1])

    # ------------------------------------------------------------- modules
    @property
    def layers(self) -> nn.ModuleList:
        return self._layers

    def layer(self, l: int) -> nn.Module:  # noqa: E741
        return self._layers[l]

    @property
    def embed(self) -> nn.Embedding:
        return get_module(self.model, self.spec.embed)

    @property
    def pos_embed(self) -> nn.Embedding | None:
        return get_module(self.model, self.spec.pos_embed) if self.spec.pos_embed else None

    @property
    def final_norm(self) -> nn.Module:
        return get_module(self.model, self.spec.final_norm)

    @property
    def unembed(self) -> nn.Linear:
        return get_module(self.model, self.spec.unembed)

    def attn(self, l: int) -> nn.Module:  # noqa: E741
        return get_module(self._layers[l], self.spec.attn)

    def o_proj(self, l: int) -> nn.Module:  # noqa: E741
        return get_module(self._layers[l], self.spec.o)

    def mlp(self, l: int) -> nn.Module:  # noqa: E741
        return get_module(self._layers[l], self.spec.mlp)

    def module_path(self, l: int, rel: str) -> str:  # noqa: E741
        """Dotted path of a per-layer module relative to the model (for nnsight envoys)."""
        return f"{self.spec.layers}.{l}.{rel}"

    # --------------------------------------------------------------- norms
    def _norm_params(self, module: nn.Module) -> NormParams:
        """The norm written out: effective weight ``w + offset`` (float32 where the offset is added, as Gemma
        computes ``1 + w.float()``), ones for a norm without weight (OLMo-1)."""
        eps = norm_eps(module, self.spec.norm_eps)
        if eps is None:
            raise UnsupportedArchitectureError(f"norm {type(module).__name__} exposes no epsilon")
        w = getattr(module, "weight", None)
        offset = self.spec.norm_weight_offset
        if not isinstance(w, torch.Tensor):
            ref = self.embed.weight
            weight = torch.ones(self.d_model, dtype=ref.dtype, device=ref.device)
        else:
            weight = w.float() + offset if offset else w
        bias = getattr(module, "bias", None)
        return NormParams(module=module, kind=self.spec.norm_kind, eps=eps, weight=weight,
                          bias=bias if isinstance(bias, torch.Tensor) else None, offset=offset)

    def norm(self, l: int, role: NormRole) -> NormParams | None:  # noqa: E741
        """The norm of layer ``l`` at ``role``, or ``None`` if the architecture has none there."""
        path = self.spec.norms.get(role)
        return self._norm_params(get_module(self._layers[l], path)) if path else None

    def final_norm_params(self) -> NormParams:
        return self._norm_params(self.final_norm)

    def qk_norms(self, l: int) -> tuple[NormParams, NormParams] | None:  # noqa: E741
        """``(q_norm, k_norm)`` of layer ``l`` or ``None``; ``spec.qk_norm_scope`` says whether each normalises the
        whole projection (``full``: weight ``[n_heads · d_head]``, OLMo-2/3) or each head (``head``: weight
        ``[d_head]``, Qwen3, Gemma-3)."""
        if not self.spec.q_norm:
            return None
        blk = self._layers[l]
        return (self._norm_params(get_module(blk, self.spec.q_norm)),
                self._norm_params(get_module(blk, self.spec.k_norm)))

    # ------------------------------------------------------------- weights
    def _linear(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W: [out, in], b: [out] | None)`` for nn.Linear or GPT-2's Conv1D (which stores ``W^T``)."""
        w = module.weight
        return (w.T if self.spec.conv1d else w), getattr(module, "bias", None)

    def attention_params(self, l: int) -> AttentionParams:  # noqa: E741
        """Head-split q/k/v/o weights of layer ``l`` (see :class:`AttentionParams` for shapes).

        Fused projections: ``concat`` rows ``[q heads · d_head; kv · d_head; kv · d_head]`` (Phi-3, GPT-2);
        ``per_head`` rows ``[head, (q, k, v), d_head]`` (GPT-NeoX ``query_key_value``).
        """
        blk, H, KV, dh, d = self._layers[l], self.n_heads, self.n_kv_heads, self.d_head, self.d_model
        if self.spec.qkv and self.spec.qkv_layout == "per_head":
            W, b = self._linear(get_module(blk, self.spec.qkv))  # [H * 3 * dh, d]
            Wq, Wk, Wv = W.reshape(H, 3, dh, d).unbind(1)  # each [H, dh, d]
            bq, bk, bv = b.reshape(H, 3, dh).unbind(1) if b is not None else (None, None, None)
        elif self.spec.qkv:
            W, b = self._linear(get_module(blk, self.spec.qkv))  # [(H + 2 KV) * dh, d]
            Wq, Wk, Wv = W.split([H * dh, KV * dh, KV * dh], dim=0)
            bq, bk, bv = b.split([H * dh, KV * dh, KV * dh]) if b is not None else (None, None, None)
        else:
            (Wq, bq), (Wk, bk), (Wv, bv) = (self._linear(get_module(blk, p))
                                            for p in (self.spec.q, self.spec.k, self.spec.v))
        Wo, bo = self._linear(get_module(blk, self.spec.o))  # [d, H*dh]
        return AttentionParams(
            W_Q=Wq.reshape(H, dh, d),
            W_K=Wk.reshape(KV, dh, d),
            W_V=Wv.reshape(KV, dh, d),
            W_O=Wo.reshape(d, H, dh).permute(1, 0, 2),
            b_Q=None if bq is None else bq.reshape(H, dh),
            b_K=None if bk is None else bk.reshape(KV, dh),
            b_V=None if bv is None else bv.reshape(KV, dh),
            b_O=bo,
        )

    def mlp_params(self, l: int) -> MLPParams:  # noqa: E741
        """The MLP of layer ``l`` (see :class:`MLPParams`); a fused ``gate_up_proj`` is split, gate first."""
        blk = self._layers[l]
        W_in, b_in = self._linear(get_module(blk, self.spec.mlp_in))
        W_out, b_out = self._linear(get_module(blk, self.spec.mlp_out))
        act = getattr(self.mlp(l), self.spec.mlp_act)
        if self.spec.mlp_kind != "gated":
            return MLPParams("plain", W_in, b_in, W_out, b_out, act)
        if self.spec.mlp_gate_up:  # [gate; up] fused (Phi-3): gate = first half, up = second half
            W_g, W_in = W_in.chunk(2, dim=0)
            b_g, b_in = b_in.chunk(2) if b_in is not None else (None, None)
        else:
            W_g, b_g = self._linear(get_module(blk, self.spec.mlp_gate))
        return MLPParams("gated", W_in, b_in, W_out, b_out, act, W_g, b_g)

    # ------------------------------------------------------- residual stream
    resid_from_output = staticmethod(resid_from_output)

    def capture_resid(self, layers: list[int] | None = None) -> AbstractContextManager[dict[int, torch.Tensor]]:
        """Record ``resid_post[l]: [batch, pos, d_model]`` with plain forward hooks for one forward
        (:func:`~.readout.capture_resid` on this model's blocks).

        >>> with adapter.capture_resid([0, 3]) as cache:
        ...     model(input_ids)
        >>> cache[3].shape
        """
        return capture_resid(self._layers, layers)

    # --------------------------------------------------- layer-level execution
    # Running decoder layers one at a time, on a slice of positions, with the keys/values of earlier positions
    # supplied from a cache: what the patching engine needs to start a patched row at layer l from a clean
    # residual and to recompute only the positions a patch can change.
    def embed_input(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """The residual entering layer 0, ``[batch, pos, d_model]``: token embedding (times ``embed_scale``, which
        HF's scaled embedding module applies), plus the learned position embedding where there is one (GPT-2)."""
        h = self.embed(input_ids)
        if self.pos_embed is not None:
            h = h + self.pos_embed(position_ids).to(h.dtype)
        return h

    def layer_type(self, l: int) -> str:  # noqa: E741
        """``full_attention`` or ``sliding_attention`` (HF's ``config.layer_types``; every layer of a model with a
        ``sliding_window`` and no ``layer_types``, as Mistral, is sliding): :func:`~.derive.layer_type_of`."""
        return layer_type_of(self.config, l)

    def sliding_window(self, l: int) -> int | None:  # noqa: E741
        """Keys a query of layer ``l`` sees (itself included: HF's ``kv > q − window``), ``None`` for full attention:
        :func:`~.derive.sliding_window_of`."""
        return sliding_window_of(self.config, l)

    def position_embeddings(self, hidden: torch.Tensor, position_ids: torch.Tensor, layer: int = 0):
        """Rotary ``(cos, sin)``, each ``[batch, pos, rotary_dims]``, of layer ``layer`` for ``position_ids: [batch,
        pos]`` (models with per-layer-type rotary bases, as OLMo-3 and Gemma-3, get the base of that layer's type);
        ``None`` for architectures without rotary positions."""
        if not self.spec.rotary_emb:
            return None
        rotary = get_module(self.model, self.spec.rotary_emb)
        if getattr(rotary, "layer_types", None):
            return rotary(hidden, position_ids, self.layer_type(layer))
        return rotary(hidden, position_ids)

    @staticmethod
    def causal_mask(key_mask: torch.Tensor, n_query: int, dtype: torch.dtype, window: int | None = None) -> torch.Tensor:
        """Additive attention mask ``[batch, 1, n_query, key]`` for queries that are the *last* ``n_query`` key
        columns: query ``q`` (key column ``c_q = key - n_query + q``) sees key ``k`` iff ``k <= c_q``,
        ``key_mask[b, k] == 1`` and, with a sliding ``window``, ``k > c_q - window`` (0 where allowed, the dtype's
        minimum elsewhere, as HF's eager mask). Left padding shifts query and key columns alike, so a window in
        columns is a window in positions."""
        n_key = key_mask.shape[1]
        cols = torch.arange(n_key, device=key_mask.device)
        q_cols = cols[n_key - n_query:]
        allowed = cols[None, :] <= q_cols[:, None]  # [q, key]
        if window is not None:
            allowed = allowed & (cols[None, :] > q_cols[:, None] - window)
        allowed = allowed[None] & key_mask[:, None, :].bool()  # [batch, q, key]
        mask = torch.zeros(allowed.shape, dtype=dtype, device=key_mask.device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        return mask[:, None]

    def layer_mask(self, l: int, key_mask: torch.Tensor, n_query: int, dtype: torch.dtype,  # noqa: E741
                   masks: dict | None = None) -> torch.Tensor:
        """:meth:`causal_mask` with layer ``l``'s sliding window; ``masks`` memoises one mask per window."""
        window = self.sliding_window(l)
        if masks is not None and window in masks:
            return masks[window]
        mask = self.causal_mask(key_mask, n_query, dtype, window)
        if masks is not None:
            masks[window] = mask
        return mask

    def run_layer(self, l: int, hidden: torch.Tensor, *, attention_mask: torch.Tensor,  # noqa: E741
                  position_ids: torch.Tensor, position_embeddings=None,
                  cache: PrefixCache | None = None) -> torch.Tensor:
        """``resid_post[l]`` for positions ``hidden: [batch, pos, d_model]`` (``resid_pre[l]`` there).

        ``attention_mask``: from :meth:`layer_mask` (layer ``l``'s window), ``[batch, 1, pos, prefix + pos]``;
        ``cache``: the keys and values of the ``prefix`` earlier positions (and, with ``record=True``, a place to
        keep this call's own), passed under the block's own keyword (``cache``, GPT-NeoX's ``layer_past``).
        """
        kwargs = {"attention_mask": attention_mask, "position_ids": position_ids, self.spec.cache_arg: cache}
        if position_embeddings is not None:
            kwargs["position_embeddings"] = position_embeddings
        return self.resid_from_output(self._layers[l](hidden, **kwargs))

    def logits(self, resid: torch.Tensor) -> torch.Tensor:
        """The model's logits ``[..., d_vocab]`` from a final-layer residual ``[..., d_model]``:
        ``unembed(final_norm(resid))``, soft-capped ``c · tanh(z / c)`` where the model caps them (Gemma-2), each
        module on its own device (a model spread over devices with accelerate's ``device_map``)."""
        norm_w = getattr(self.final_norm, "weight", None)
        if norm_w is not None and norm_w.device.type != "meta":
            resid = resid.to(norm_w.device)
        x = self.final_norm(resid)
        w = self.unembed.weight
        z = self.unembed(x.to(w.device) if w.device.type != "meta" else x)
        cap = self.final_logit_softcap
        if cap is not None:
            z = torch.tanh(z / cap) * cap
        return z


class PrefixCache:
    """A one-layer stand-in for HF's key/value cache, for :meth:`ArchitectureAdapter.run_layer`.

    The attention module calls ``update(k_new, v_new, layer_idx)`` with this call's keys/values
    ``[batch, kv_head, pos, d_head]`` (after rotary) and attends over what it returns: the cached ``prefix`` keys
    and values (``[batch, kv_head, prefix, d_head]`` or ``None``) followed by the new ones. With ``record=True`` the
    new keys/values are kept in ``.new`` (so a clean run can fill the cache that patched runs reuse).
    Sliding windows need nothing here: the mask from :meth:`ArchitectureAdapter.layer_mask` hides the keys a
    sliding layer must not see, and the cache always holds the whole prefix.
    """

    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None, record: bool = False):
        self.keys, self.values, self.record = keys, values, record
        self.new: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int | None = None,
               *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if self.record:
            self.new = (key_states, value_states)
        if self.keys is None or self.keys.shape[2] == 0:
            return key_states, value_states
        return torch.cat([self.keys, key_states], dim=2), torch.cat([self.values, value_states], dim=2)
