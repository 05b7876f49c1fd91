"""The data an adapter is made of: the derived :class:`ArchitectureSpec`, and the parameter views it hands out.

Everything here is plain data (frozen dataclasses); the code that fills it in lives in :mod:`.derive`, the
per-family facts in :mod:`.registry`, and the object the analyses use in :mod:`.adapter`.

Shape vocabulary used throughout ivlens: ``batch pos d_model layer head kv_head d_head d_mlp d_vocab``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

from ivlens.errors import IvlensError

NormKind = Literal["rms", "layer"]
NormRole = Literal["attn_in", "attn_out", "mlp_in", "mlp_out"]
NORM_ROLES: tuple[NormRole, ...] = ("attn_in", "attn_out", "mlp_in", "mlp_out")
QKVLayout = Literal["concat", "per_head"]


class UnsupportedArchitectureError(IvlensError, TypeError):
    """The model's class has no adapter (or one cannot be derived); the message says what is missing and how to
    add it."""


@dataclass(frozen=True)
class ArchitectureSpec:
    """Complete description of one model's architecture, as derived by :func:`~.derive.derive_spec` from its
    config and module tree plus the few facts of its :class:`~.registry.Family`.

    Paths are dotted attribute paths: ``layers``, ``embed``, ``pos_embed``, ``final_norm``, ``unembed`` and
    ``rotary_emb`` relative to the model, the per-layer ones relative to one decoder block.

    Attention: separate ``q``/``k``/``v`` projections, or one fused ``qkv`` whose output rows are laid out as
    ``qkv_layout``: ``"concat"`` = ``[q heads · d_head; kv · d_head; kv · d_head]`` (Phi-3 ``qkv_proj``, GPT-2
    ``c_attn``) or ``"per_head"`` = ``[head, (q, k, v), d_head]`` (GPT-NeoX ``query_key_value``).
    MLP: ``gated`` (``down(act(gate(x)) ⊙ up(x))``; ``mlp_gate_up`` names a fused ``[gate; up]`` projection, gate
    first, as Phi-3's ``gate_up_proj``) or ``plain`` (``out(act(in(x)))``, GPT-2, GPT-NeoX).
    ``norms`` maps each role present to the norm's path: pre-norm has ``attn_in``/``mlp_in``, post-norm (OLMo-2/3)
    ``attn_out``/``mlp_out``, sandwich (Gemma-2/3) all four. ``parallel_residual``: attention and MLP read the same
    block input (GPT-NeoX ``use_parallel_residual``): ``x + attn(ln1(x)) + mlp(ln2(x))``.
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
    mlp_in: str  # gated: up_proj (or the fused gate_up_proj); plain: c_fc / dense_h_to_4h
    mlp_out: str  # down_proj / c_proj / dense_4h_to_h
    mlp: str = "mlp"  # the MLP module
    mlp_gate: str | None = None
    mlp_gate_up: bool = False  # mlp_in is a fused [gate; up] projection (gate = first half)
    mlp_act: str = "act_fn"  # attribute of the MLP module holding the activation
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None  # fused projection, laid out as qkv_layout
    qkv_layout: QKVLayout = "concat"
    conv1d: bool = False  # GPT-2 stores Linear weights transposed (Conv1D: y = x W + b)
    q_norm: str | None = None
    k_norm: str | None = None
    qk_norm_scope: Literal["full", "head"] | None = None
    pos_embed: str | None = None
    rotary: bool = True
    rotary_emb: str | None = None  # the model's rotary-embedding module (cos/sin per position)
    parallel_residual: bool = False
    norm_weight_offset: float = 0.0  # 1.0 where the norm computes x̂ · (1 + w) (Gemma)
    norm_eps: float | None = None  # where a norm module exposes no epsilon (OLMo-1's LayerNorm: 1e-5 in code)
    cache_arg: str = "cache"  # the decoder layer's keyword for the key/value cache (GPT-NeoX: layer_past)
    notes: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class NormParams:
    """A norm at one site: ``y = w ⊙ (x − μ) / σ + b`` (``kind="layer"``) or ``y = w ⊙ x / rms(x)`` (``"rms"``).

    ``weight: [d]`` is the **effective** multiplicative weight: Gemma's ``1 + w`` already added (in float32, as HF
    computes it), ones for a norm without a weight (OLMo-1's non-parametric LayerNorm); ``bias: [d] | None``.
    ``offset`` records what was added to the stored parameter (1.0 for Gemma, else 0.0). :meth:`apply` is the
    norm written out, equal to the module's output.
    """

    module: nn.Module
    kind: NormKind
    eps: float
    weight: torch.Tensor
    bias: torch.Tensor | None
    offset: float = 0.0

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The norm's divisor per position: ``σ(x)`` or ``rms(x)``, shape ``x.shape[:-1] + (1,)`` (float32)."""
        x = x.float()
        if self.kind == "layer":
            return (x.var(-1, keepdim=True, unbiased=False) + self.eps).sqrt()
        return (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``w ⊙ (x − μ) / σ + b`` or ``w ⊙ x / rms(x)`` in float32, shape of ``x``."""
        xf = x.float()
        if self.kind == "layer":
            xf = xf - xf.mean(-1, keepdim=True)
        y = self.weight.float() * (xf / self.scale(x))
        return y + self.bias.float() if self.bias is not None else y


@dataclass(frozen=True)
class AttentionParams:
    """Head-split attention weights of one layer, in the convention ``y = W x + b``.

    ``W_Q: [head, d_head, d_model]``, ``W_K, W_V: [kv_head, d_head, d_model]``,
    ``W_O: [head, d_model, d_head]`` (so the layer output is ``Σ_h W_O[h] z_h + b_O``);
    biases ``b_Q: [head, d_head]``, ``b_K, b_V: [kv_head, d_head]``, ``b_O: [d_model]`` or ``None``.
    Fused projections are already split (see :class:`ArchitectureSpec` ``qkv_layout``).
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

    Gated: ``out = W_out (act(W_gate x + b_gate) ⊙ (W_in x + b_in)) + b_out`` (SwiGLU, GeGLU; a fused
    ``gate_up_proj`` is already split: gate = first half, up = second half).
    Plain: ``out = W_out act(W_in x + b_in) + b_out`` (GPT-2, GPT-NeoX, with biases).
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


@dataclass(frozen=True)
class Family:
    """What cannot be read off a model's module tree.

    Args:
        name: short name (``spec.name``, reports).
        classes: the HF ``*ForCausalLM`` class names it covers.
        qkv_layout: row layout of a fused qkv projection (``concat`` unless the family says otherwise).
        norm_eps: epsilon of norms that expose none (hard-coded in their ``forward``).
        overrides: :class:`ArchitectureSpec` fields that replace what was derived.
        notes: what is special about the family (docs, reports).
    """

    name: str
    classes: tuple[str, ...]
    qkv_layout: QKVLayout = "concat"
    norm_eps: float | None = None
    overrides: dict = field(default_factory=dict)
    notes: str = ""
