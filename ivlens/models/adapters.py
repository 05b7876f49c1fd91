"""Architecture adapters: one vocabulary for every causal LM that ivlens analyses.

Every analysis (patching, probing, tracing) speaks of *sites*, never of a model family's module names:

- ``layers``: the decoder blocks, ``n_layers`` of them. The **residual stream after layer l**
  (``resid_post[l]``, shape ``[batch, pos, d_model]``) is the output of block ``l``. Under transformers 5
  a block returns that tensor directly; ``hidden_states[-1]`` of an HF forward is *after* the final norm,
  so never read residuals from ``output_hidden_states``.
- attention: ``q/k/v/o`` projections, ``n_heads`` query heads of size ``d_head``, ``n_kv_heads`` key/value
  heads (grouped-query attention: query head ``h`` reads KV head ``h // (n_heads // n_kv_heads)``).
- MLP: gated (``down(act(gate(x)) * up(x))``: OLMo-2, Llama, Qwen2) or plain (``out(act(in(x)))``: GPT-2).
- norms, and *where they sit* in the block, by role:

  ============  =====================================================  ==========================
  role          meaning                                                 examples
  ============  =====================================================  ==========================
  ``attn_in``   normalises the block input before attention             Llama/Qwen2 input_layernorm,
                (pre-norm)                                               GPT-2 ln_1
  ``attn_out``  normalises the attention output before the residual     OLMo-2 post_attention_layernorm
                add (post-norm)
  ``mlp_in``    normalises the residual before the MLP (pre-norm)       Llama post_attention_layernorm,
                                                                          GPT-2 ln_2
  ``mlp_out``   normalises the MLP output before the residual add       OLMo-2 post_feedforward_layernorm
  ``q_norm``    QK-norm on the queries (``scope`` full or per head)     OLMo-2 (full), Qwen3 (head)
  ``k_norm``    QK-norm on the keys
  ============  =====================================================  ==========================

  A sandwich-norm architecture simply has both ``*_in`` and ``*_out`` roles.
- ``embed`` (token embedding), ``pos_embed`` (learned absolute positions, GPT-2) or rotary positions,
  ``final_norm`` and ``unembed`` (``W_U: [d_vocab, d_model]``).

The adapter is chosen by the model's class (``isinstance`` against the classes registered in
:data:`ARCHITECTURES`), never by a substring of a name. To support a new architecture, add an
:class:`ArchitectureSpec` for its ``*ForCausalLM`` class (module paths relative to the model, norm roles,
MLP kind) to :data:`ARCHITECTURES`, then run ``tests/test_adapters.py`` with a tiny random model of it.

Shape vocabulary used throughout ivlens: ``batch pos d_model layer head kv_head d_head d_mlp d_vocab``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel

NormKind = Literal["rms", "layer"]
NormRole = Literal["attn_in", "attn_out", "mlp_in", "mlp_out"]
NORM_ROLES: tuple[NormRole, ...] = ("attn_in", "attn_out", "mlp_in", "mlp_out")


class UnsupportedArchitectureError(TypeError):
    """The model's class has no adapter; the message says how to add one."""


@dataclass(frozen=True)
class ArchitectureSpec:
    """Data-only description of one architecture: module paths and where each norm sits.

    Paths are dotted attribute paths; ``layers`` is relative to the model, the per-layer paths are relative
    to one decoder block. ``qkv`` names a fused projection (GPT-2's ``c_attn``) used instead of ``q/k/v``.
    """

    name: str
    class_names: tuple[str, ...]
    layers: str
    embed: str
    final_norm: str
    unembed: str
    attn: str
    o: str
    norm_kind: NormKind
    norms: dict[NormRole, str]
    mlp_kind: Literal["gated", "plain"]
    mlp_in: str  # gated: up_proj; plain: c_fc
    mlp_out: str  # down_proj / c_proj
    mlp_gate: str | None = None
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None  # fused [q; k; v] projection (Conv1D in GPT-2)
    conv1d: bool = False  # GPT-2 stores Linear weights transposed (Conv1D: y = x W + b)
    q_norm: str | None = None
    k_norm: str | None = None
    qk_norm_scope: Literal["full", "head"] | None = None
    pos_embed: str | None = None
    rotary: bool = True
    rotary_emb: str | None = None  # the model's rotary-embedding module (cos/sin per position)
    notes: str = ""


OLMO2 = ArchitectureSpec(
    name="olmo2",
    class_names=("Olmo2ForCausalLM",),
    layers="model.layers",
    embed="model.embed_tokens",
    rotary_emb="model.rotary_emb",
    final_norm="model.norm",
    unembed="lm_head",
    attn="self_attn",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    q_norm="self_attn.q_norm",
    k_norm="self_attn.k_norm",
    qk_norm_scope="full",
    norm_kind="rms",
    norms={"attn_out": "post_attention_layernorm", "mlp_out": "post_feedforward_layernorm"},
    mlp_kind="gated",
    mlp_gate="mlp.gate_proj",
    mlp_in="mlp.up_proj",
    mlp_out="mlp.down_proj",
    notes="post-norm: x + norm(attn(x)), then x + norm(mlp(x)); QK-norm over all heads at once",
)

LLAMA = ArchitectureSpec(
    name="llama",
    class_names=("LlamaForCausalLM",),
    layers="model.layers",
    embed="model.embed_tokens",
    rotary_emb="model.rotary_emb",
    final_norm="model.norm",
    unembed="lm_head",
    attn="self_attn",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    norm_kind="rms",
    norms={"attn_in": "input_layernorm", "mlp_in": "post_attention_layernorm"},
    mlp_kind="gated",
    mlp_gate="mlp.gate_proj",
    mlp_in="mlp.up_proj",
    mlp_out="mlp.down_proj",
    notes="pre-norm; 'post_attention_layernorm' is the MLP's *input* norm",
)

QWEN2 = ArchitectureSpec(
    name="qwen2",
    class_names=("Qwen2ForCausalLM",),
    layers="model.layers",
    embed="model.embed_tokens",
    rotary_emb="model.rotary_emb",
    final_norm="model.norm",
    unembed="lm_head",
    attn="self_attn",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    norm_kind="rms",
    norms={"attn_in": "input_layernorm", "mlp_in": "post_attention_layernorm"},
    mlp_kind="gated",
    mlp_gate="mlp.gate_proj",
    mlp_in="mlp.up_proj",
    mlp_out="mlp.down_proj",
    notes="pre-norm like Llama, with q/k/v biases",
)

GPT2 = ArchitectureSpec(
    name="gpt2",
    class_names=("GPT2LMHeadModel",),
    layers="transformer.h",
    embed="transformer.wte",
    pos_embed="transformer.wpe",
    rotary=False,
    final_norm="transformer.ln_f",
    unembed="lm_head",
    attn="attn",
    qkv="attn.c_attn",
    o="attn.c_proj",
    conv1d=True,
    norm_kind="layer",
    norms={"attn_in": "ln_1", "mlp_in": "ln_2"},
    mlp_kind="plain",
    mlp_in="mlp.c_fc",
    mlp_out="mlp.c_proj",
    notes="pre-LayerNorm with biases, learned absolute positions, fused Conv1D q/k/v",
)

#: Registered architectures, keyed by the HF ``*ForCausalLM`` class name (matched exactly, on the model's
#: class and its base classes, so subclasses of a supported class are supported too).
ARCHITECTURES: dict[str, ArchitectureSpec] = {
    cls: spec for spec in (OLMO2, LLAMA, QWEN2, GPT2) for cls in spec.class_names
}


def _get(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


@dataclass(frozen=True)
class NormParams:
    """A norm at one site: ``y = w ⊙ (x − μ) / σ + b`` (LayerNorm) or ``y = w ⊙ x / rms(x)`` (RMSNorm).

    ``weight: [d]``, ``bias: [d] | None``; ``kind`` says whether the mean is subtracted.
    """

    module: nn.Module
    kind: NormKind
    eps: float
    weight: torch.Tensor
    bias: torch.Tensor | None

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The norm's divisor per position: ``σ(x)`` or ``rms(x)``, shape ``x.shape[:-1] + (1,)``."""
        x = x.float()
        if self.kind == "layer":
            return (x.var(-1, keepdim=True, unbiased=False) + self.eps).sqrt()
        return (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()


@dataclass(frozen=True)
class AttentionParams:
    """Head-split attention weights of one layer, in the convention ``y = W x + b``.

    ``W_Q: [head, d_head, d_model]``, ``W_K, W_V: [kv_head, d_head, d_model]``,
    ``W_O: [head, d_model, d_head]`` (so the layer output is ``Σ_h W_O[h] z_h + b_O``);
    biases ``b_Q: [head, d_head]``, ``b_K, b_V: [kv_head, d_head]``, ``b_O: [d_model]`` or ``None``.
    """

    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    W_O: torch.Tensor
    b_Q: torch.Tensor | None
    b_K: torch.Tensor | None
    b_V: torch.Tensor | None
    b_O: torch.Tensor | None


@dataclass(frozen=True)
class MLPParams:
    """MLP weights of one layer in the convention ``y = W x + b``.

    Gated: ``out = W_out (act(W_gate x + b_gate) ⊙ (W_in x + b_in)) + b_out``.
    Plain: ``out = W_out act(W_in x + b_in) + b_out``.
    ``W_in, W_gate: [d_mlp, d_model]``, ``W_out: [d_model, d_mlp]``.
    """

    kind: Literal["gated", "plain"]
    W_in: torch.Tensor
    b_in: torch.Tensor | None
    W_out: torch.Tensor
    b_out: torch.Tensor | None
    act: Callable[[torch.Tensor], torch.Tensor]
    W_gate: torch.Tensor | None = None
    b_gate: torch.Tensor | None = None


@dataclass
class ArchitectureAdapter:
    """The vocabulary of one loaded model. Build it with :func:`get_adapter`.

    >>> adapter = get_adapter(model)
    >>> adapter.n_layers, adapter.n_heads, adapter.d_head
    """

    model: PreTrainedModel
    spec: ArchitectureSpec
    _layers: nn.ModuleList = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._layers = _get(self.model, self.spec.layers)

    # ----------------------------------------------------------------- sizes
    @property
    def config(self):
        return self.model.config

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

    @property
    def n_kv_heads(self) -> int:
        return getattr(self.config, "num_key_value_heads", None) or self.n_heads

    @property
    def d_head(self) -> int:
        return getattr(self.config, "head_dim", None) or self.d_model // self.n_heads

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 for multi-head attention)."""
        return self.n_heads // self.n_kv_heads

    @property
    def d_vocab(self) -> int:
        return self.unembed.weight.shape[0]

    @property
    def norm_placement(self) -> Literal["pre", "post", "sandwich"]:
        has_in = any(r in self.spec.norms for r in ("attn_in", "mlp_in"))
        has_out = any(r in self.spec.norms for r in ("attn_out", "mlp_out"))
        return "sandwich" if has_in and has_out else ("pre" if has_in else "post")

    # ------------------------------------------------------------- modules
    @property
    def layers(self) -> nn.ModuleList:
        return self._layers

    def layer(self, l: int) -> nn.Module:  # noqa: E741
        return self._layers[l]

    @property
    def embed(self) -> nn.Embedding:
        return _get(self.model, self.spec.embed)

    @property
    def pos_embed(self) -> nn.Embedding | None:
        return _get(self.model, self.spec.pos_embed) if self.spec.pos_embed else None

    @property
    def final_norm(self) -> nn.Module:
        return _get(self.model, self.spec.final_norm)

    @property
    def unembed(self) -> nn.Linear:
        return _get(self.model, self.spec.unembed)

    def attn(self, l: int) -> nn.Module:  # noqa: E741
        return _get(self._layers[l], self.spec.attn)

    def o_proj(self, l: int) -> nn.Module:  # noqa: E741
        return _get(self._layers[l], self.spec.o)

    def mlp(self, l: int) -> nn.Module:  # noqa: E741
        return _get(self._layers[l], self.spec.mlp_out.rsplit(".", 1)[0])

    def module_path(self, l: int, rel: str) -> str:  # noqa: E741
        """Dotted path of a per-layer module relative to the model (for nnsight envoys)."""
        return f"{self.spec.layers}.{l}.{rel}"

    # --------------------------------------------------------------- norms
    def _norm_params(self, module: nn.Module) -> NormParams:
        eps = getattr(module, "variance_epsilon", None)
        if eps is None:
            eps = getattr(module, "eps", None)
        if eps is None:
            raise UnsupportedArchitectureError(f"norm {type(module).__name__} exposes no epsilon")
        bias = getattr(module, "bias", None)
        return NormParams(module=module, kind=self.spec.norm_kind, eps=float(eps),
                          weight=module.weight, bias=bias)

    def norm(self, l: int, role: NormRole) -> NormParams | None:  # noqa: E741
        """The norm of layer ``l`` at ``role``, or ``None`` if the architecture has none there."""
        path = self.spec.norms.get(role)
        return self._norm_params(_get(self._layers[l], path)) if path else None

    def final_norm_params(self) -> NormParams:
        return self._norm_params(self.final_norm)

    def qk_norms(self, l: int) -> tuple[NormParams, NormParams] | None:  # noqa: E741
        if not self.spec.q_norm:
            return None
        blk = self._layers[l]
        return (self._norm_params(_get(blk, self.spec.q_norm)), self._norm_params(_get(blk, self.spec.k_norm)))

    # ------------------------------------------------------------- weights
    def _linear(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W: [out, in], b: [out] | None)`` for nn.Linear or GPT-2's Conv1D (which stores ``W^T``)."""
        w = module.weight
        return (w.T if self.spec.conv1d else w), getattr(module, "bias", None)

    def attention_params(self, l: int) -> AttentionParams:  # noqa: E741
        """Head-split q/k/v/o weights of layer ``l`` (see :class:`AttentionParams` for shapes)."""
        blk, H, KV, dh, d = self._layers[l], self.n_heads, self.n_kv_heads, self.d_head, self.d_model
        if self.spec.qkv:
            W, b = self._linear(_get(blk, self.spec.qkv))  # [3*H*dh, d]
            Wq, Wk, Wv = W.split([H * dh, KV * dh, KV * dh], dim=0)
            bq, bk, bv = b.split([H * dh, KV * dh, KV * dh]) if b is not None else (None, None, None)
        else:
            (Wq, bq), (Wk, bk), (Wv, bv) = (self._linear(_get(blk, p)) for p in (self.spec.q, self.spec.k, self.spec.v))
        Wo, bo = self._linear(_get(blk, self.spec.o))  # [d, H*dh]
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
        blk = self._layers[l]
        W_in, b_in = self._linear(_get(blk, self.spec.mlp_in))
        W_out, b_out = self._linear(_get(blk, self.spec.mlp_out))
        mlp = self.mlp(l)
        act = getattr(mlp, "act_fn", None) or getattr(mlp, "act", None)
        if act is None:
            raise UnsupportedArchitectureError(f"MLP {type(mlp).__name__} exposes no activation (act_fn/act)")
        if self.spec.mlp_kind == "gated":
            W_g, b_g = self._linear(_get(blk, self.spec.mlp_gate))
            return MLPParams("gated", W_in, b_in, W_out, b_out, act, W_g, b_g)
        return MLPParams("plain", W_in, b_in, W_out, b_out, act)

    # ------------------------------------------------------- residual stream
    @staticmethod
    def resid_from_output(output) -> torch.Tensor:
        """A decoder block's output as the residual tensor ``[batch, pos, d_model]``.

        transformers 5 blocks return the tensor; older ones a tuple whose first item is it.
        """
        return output[0] if isinstance(output, tuple) else output

    @contextmanager
    def capture_resid(self, layers: list[int] | None = None) -> Iterator[dict[int, torch.Tensor]]:
        """Record ``resid_post[l]: [batch, pos, d_model]`` with plain forward hooks for one forward.

        >>> with adapter.capture_resid([0, 3]) as cache:
        ...     model(input_ids)
        >>> cache[3].shape
        """
        cache: dict[int, torch.Tensor] = {}
        handles = []
        for l in layers if layers is not None else range(self.n_layers):  # noqa: E741
            def hook(_mod, _inp, out, l=l):  # noqa: E741
                cache[l] = self.resid_from_output(out).detach()
            handles.append(self._layers[l].register_forward_hook(hook))
        try:
            yield cache
        finally:
            for h in handles:
                h.remove()


    # --------------------------------------------------- layer-level execution
    # Running decoder layers one at a time, on a slice of positions, with the keys/values of earlier positions
    # supplied from a cache: what the patching engine needs to start a patched row at layer l from a clean
    # residual and to recompute only the positions a patch can change.
    def embed_input(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """The residual entering layer 0, ``[batch, pos, d_model]``: token embedding, plus the learned position
        embedding where the architecture has one (GPT-2)."""
        h = self.embed(input_ids)
        if self.pos_embed is not None:
            h = h + self.pos_embed(position_ids).to(h.dtype)
        return h

    def layer_type(self, l: int) -> str:  # noqa: E741
        """``full_attention`` or ``sliding_attention`` (HF's ``config.layer_types``; every layer of a model with a
        ``sliding_window`` and no ``layer_types``, as Mistral, is sliding)."""
        types = getattr(self.config, "layer_types", None)
        if types:
            return types[l]
        return "sliding_attention" if getattr(self.config, "sliding_window", None) else "full_attention"

    def sliding_window(self, l: int) -> int | None:  # noqa: E741
        """Keys a query of layer ``l`` sees (itself included: HF's ``kv > q − window``), ``None`` for full attention."""
        if self.layer_type(l) != "sliding_attention":
            return None
        return getattr(self.config, "sliding_window", None)

    def position_embeddings(self, hidden: torch.Tensor, position_ids: torch.Tensor, layer: int = 0):
        """Rotary ``(cos, sin)``, each ``[batch, pos, d_head]``, of layer ``layer`` for ``position_ids: [batch, pos]``
        (models with per-layer-type rotary bases, as OLMo-3 and Gemma-3, get the base of that layer's type);
        ``None`` for architectures without rotary positions."""
        if not self.spec.rotary_emb:
            return None
        rotary = _get(self.model, self.spec.rotary_emb)
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

        ``attention_mask``: from :meth:`layer_mask` (layer ``l``'s window), ``[batch, 1, pos, prefix + pos]``; ``cache``: the keys and
        values of the ``prefix`` earlier positions (and, with ``record=True``, a place to keep this call's own).
        """
        kwargs = {"attention_mask": attention_mask, "position_ids": position_ids, "cache": cache}
        if position_embeddings is not None:
            kwargs["position_embeddings"] = position_embeddings
        return self.resid_from_output(self._layers[l](hidden, **kwargs))

    def logits(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., d_vocab]`` from a final-layer residual ``[..., d_model]``: unembed(final_norm(resid)), each
        on its own module's device (a model spread over devices with accelerate's ``device_map``)."""
        norm_w = getattr(self.final_norm, "weight", None)
        if norm_w is not None and norm_w.device.type != "meta":
            resid = resid.to(norm_w.device)
        x = self.final_norm(resid)
        w = self.unembed.weight
        return self.unembed(x.to(w.device) if w.device.type != "meta" else x)


class PrefixCache:
    """A one-layer stand-in for HF's key/value cache, for :meth:`ArchitectureAdapter.run_layer`.

    The attention module calls ``update(k_new, v_new, layer_idx)`` with this call's keys/values
    ``[batch, kv_head, pos, d_head]`` (after rotary) and attends over what it returns: the cached ``prefix`` keys
    and values (``[batch, kv_head, prefix, d_head]`` or ``None``) followed by the new ones. With ``record=True`` the
    new keys/values are kept in ``.new`` (so a clean run can fill the cache that patched runs reuse).
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

def get_adapter(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for ``model``, chosen by its class (and its base classes), never by its name.

    Raises :class:`UnsupportedArchitectureError` naming the class, what ivlens needs, and how to add it.
    """
    for cls in type(model).__mro__:
        spec = ARCHITECTURES.get(cls.__name__)
        if spec is not None:
            return ArchitectureAdapter(model=model, spec=spec)
    supported = ", ".join(sorted(ARCHITECTURES))
    raise UnsupportedArchitectureError(
        f"ivlens has no architecture adapter for {type(model).__name__}. Supported: {supported}. "
        "An adapter needs: the path of the decoder layers, the token (and position) embedding, the final norm "
        "and unembedding, the q/k/v/o projections, the MLP projections and activation, and every norm with "
        "its role (attn_in, attn_out, mlp_in, mlp_out). Add an ArchitectureSpec for this class to "
        "ivlens.models.adapters.ARCHITECTURES and run tests/test_adapters.py on a tiny random model of it."
    )
