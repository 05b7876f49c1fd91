"""The frozen linear surrogate of one forward pass.

Run the model once on a prompt and freeze every non-linear factor at its value on that input:

- **norms**: the divisor ``σ_t`` of every norm at every position (RMSNorm ``rms(x_t)``, LayerNorm the standard
  deviation). The norm becomes the linear map ``x ↦ w ⊙ C x / σ_t`` plus its bias as a constant, where
  ``C = I − 11ᵀ/d`` is LayerNorm's centring (``C = I`` for RMSNorm);
- **attention**: every pattern ``A_h[t, s]`` (all heads, all positions). RoPE, QK-norm (OLMo-2), scaling and the
  softmax only shape the pattern, so with the pattern frozen head ``h`` moves ``A_h[t, s] · W_O^h W_V^h n[s]``
  from position ``s`` to ``t`` (grouped-query attention: query head ``h`` reads KV head ``h // group``);
- **MLP**: gated ``W_out (act(W_gate n) ⊙ W_in n)`` freezes the gate ``act(W_gate n)`` into a diagonal; plain
  ``W_out act(W_in n + b)`` freezes the elementwise slope ``act(u)/u`` (its ``u → 0`` limit ``act'(0)``).

Where the norms sit comes from the adapter's roles: pre-norm (Llama, Qwen2, GPT-2: ``attn_in``/``mlp_in``),
post-norm on the block outputs (OLMo-2: ``x + norm(attn(x))``, ``attn_out``/``mlp_out``), or both (sandwich,
Gemma-2/3). The rest of what the adapter describes is folded in as well: the embedding scale (Gemma's √d_model)
into the embedding source; a value clamp (OLMo-1's ``clip_qkv``) into a 0/1 mask on the values plus constants;
sliding windows, soft-capped attention scores, QK-norms and partial rotary into the frozen patterns; the parallel
residual (GPT-NeoX) into the state layout (one state per layer); a final-logit soft-cap ``c·tanh(z/c)`` into the
target, through its frozen slope (:func:`logit_slopes`). No architecture name appears below.

The network is then affine in the residual stream. With the residual states numbered by sublayer,

    x_0 = embed(tokens) [+ pos_embed],   x_{2l+1} = x_{2l} + Attn_l x_{2l} + a_l,   x_{2l+2} = x_{2l+1} + MLP_l x_{2l+1} + m_l

(``Attn_l``, ``MLP_l`` linear, ``a_l, m_l: [pos, d_model]`` the constant bias terms they write, every bias of the
sublayer pushed through the frozen maps; parallel residual: ``x_{l+1} = x_l + Attn_l x_l + MLP_l x_l + a_l + m_l``),
and the target scalar is

    y = e · (w_f ⊙ C x_{2L}[T] / σ_f[T] + b_f) + b_U·coef,    e = Σ_k coef_k W_U[k]

(a label's logit: one ``k`` with coefficient 1; a logit difference: ``+1`` and ``−1``; under a final soft-cap each
coefficient times the token's frozen slope). ``y`` equals the model's real logit (difference) up to float error:
that is the completeness test.

A **linear read-out** (:meth:`Target.readout`) is any direction ``w: [d_model]`` read at the residual stream after
decoder block ``l`` (``resid_l``, the state an IV is read from, :mod:`ivlens.probing.collect`) at position ``t``:

    y = w · resid_l[t] = w · x_{2l+2}[t]          (parallel residual: w · x_{l+1}[t])

The layers above ``l`` cannot change it, so the surrogate is cut after block ``l`` (:meth:`Surrogate.upto`) and the
backward pass starts from ``w`` at ``(l, t)`` instead of the unembedding pushed through the final norm; ``y`` has no
constant term. The real value comes from the model's own block output (``real_resid``, recorded by
:meth:`~ivlens.models.adapters.ArchitectureAdapter.capture_resid`).

Shape vocabulary: ``pos`` (T tokens), ``d_model`` (d), ``head`` (H), ``kv_head`` (KV), ``d_head`` (dh),
``d_mlp`` (dm), ``d_vocab`` (V); states are indexed by ``k = 0 … 2L`` (``2l``: before layer ``l``'s attention,
``2l+1``: before its MLP; parallel residual: ``k = 0 … L``, ``l`` before layer ``l``; :meth:`Surrogate.state_in`).

>>> sur = build_surrogate(model, input_ids)                  # one real forward
>>> tgt = Target.logit(answer_id)
>>> y = readout(sur, tgt, frozen_forward(sur, sur.x0)[-1])   # == model logit of answer_id at the last position
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch
from torch import Tensor

from ivlens.errors import IvlensError
from ivlens.models.adapters import (
    ArchitectureAdapter,
    NormParams,
    UnsupportedArchitectureError,
    get_adapter,
)

log = logging.getLogger(__name__)


class TracingError(IvlensError, RuntimeError):
    """The tracer cannot decompose this model or input; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------- norms
@dataclass(frozen=True)
class FrozenNorm:
    """A norm frozen at its per-position divisor: ``n_t = w ⊙ C x_t / σ_t + b``.

    ``weight: [d]``, ``bias: [d] | None``, ``inv_scale: [pos]`` (``1/σ_t``); ``center``: LayerNorm's mean
    subtraction ``C = I − 11ᵀ/d`` (``C`` is symmetric, so it is its own transpose).
    """

    weight: Tensor
    bias: Tensor | None
    inv_scale: Tensor
    center: bool

    def apply(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        """Linear part ``w ⊙ C x / σ``. ``x: [pos, d]`` (all positions) or ``[n, d]`` with ``pos: [n]``."""
        if self.center:
            x = x - x.mean(-1, keepdim=True)
        s = self.inv_scale if pos is None else self.inv_scale[pos]
        return x * s[:, None] * self.weight

    def apply_T(self, rho: Tensor, pos: Tensor | None = None) -> Tensor:
        """Transpose of the linear part (a VJP): ``C (ρ ⊙ w / σ)``; shapes as in :meth:`apply`."""
        s = self.inv_scale if pos is None else self.inv_scale[pos]
        out = rho * self.weight * s[:, None]
        return out - out.mean(-1, keepdim=True) if self.center else out


def _ident(x: Tensor, pos: Tensor | None = None) -> Tensor:
    return x


def _lin(norm: FrozenNorm | None):
    return norm.apply if norm is not None else _ident


def _lin_T(norm: FrozenNorm | None):
    return norm.apply_T if norm is not None else _ident


def _affine(norm: FrozenNorm | None, x: Tensor) -> Tensor:
    """The frozen norm applied to a constant ``x: [pos, d]``, bias included (identity without a norm)."""
    if norm is None:
        return x
    out = norm.apply(x)
    return out + norm.bias if norm.bias is not None else out


# ------------------------------------------------------------------------------------------ sublayers
@dataclass(frozen=True)
class FrozenAttention:
    """One attention sublayer with frozen patterns.

    ``pattern: [head, pos, pos]`` (query t, key s), ``W_V: [kv_head, d_head, d_model]``,
    ``W_O: [head, d_model, d_head]``, ``group``: query heads per KV head; ``norm_in`` (pre-norm) and
    ``norm_out`` (post-norm) frozen or ``None``; ``bias: [pos, d_model]`` the constant the sublayer adds to the
    residual (``W_O (W_V b_norm_in + b_V)`` weighted by the pattern, ``b_O``, then ``norm_out``);
    ``v_mask: [kv_head, pos, d_head] | None``: where a value clamp (OLMo-1's ``clip_qkv``) did *not* bite. A clamp
    is piecewise linear, so frozen it is ``v = M ⊙ (W_V n + b_V) + (1 − M) ⊙ (±clip)``: the mask multiplies the
    linear part and the clamped entries join the constant ``bias``.
    """

    pattern: Tensor
    W_V: Tensor
    W_O: Tensor
    group: int
    norm_in: FrozenNorm | None
    norm_out: FrozenNorm | None
    bias: Tensor
    v_mask: Tensor | None = None

    @property
    def n_heads(self) -> int:
        return self.W_O.shape[0]

    @property
    def d_head(self) -> int:
        return self.W_O.shape[-1]

    @cached_property
    def v_mask_flat(self) -> Tensor | None:
        """``[pos, head·d_head]``: the value clamp's 0/1 mask per query head (``None``: no clamp)."""
        if self.v_mask is None:
            return None
        m = self.v_mask.repeat_interleave(self.group, dim=0)  # [head, pos, d_head]
        return m.transpose(0, 1).reshape(m.shape[1], -1).contiguous()

    def values(self, normed: Tensor, pos: Tensor | None = None) -> Tensor:
        """Every query head's frozen value of ``normed: [n, d_model]`` (rows at positions ``pos: [n]``, default
        all): ``[n, head·d_head]``, ``M_s ⊙ W_V^h n`` (``M`` the value clamp's mask, 1 without one)."""
        v = normed @ self.W_V_flat.T
        if self.v_mask_flat is None:
            return v
        return v * (self.v_mask_flat if pos is None else self.v_mask_flat[pos])

    def values_T(self, beta: Tensor, pos: Tensor | None = None) -> Tensor:
        """Transpose of :meth:`values`: ``beta: [n, head·d_head] → [n, d_model]``."""
        if self.v_mask_flat is not None:
            beta = beta * (self.v_mask_flat if pos is None else self.v_mask_flat[pos])
        return beta @ self.W_V_flat

    def W_V_heads(self) -> Tensor:
        """``W_V`` per query head: ``[head, d_head, d_model]`` (KV heads repeated ``group`` times)."""
        return self.W_V_flat.view(self.n_heads, -1, self.W_V.shape[-1])

    @cached_property
    def W_V_flat(self) -> Tensor:
        """``[head·d_head, d_model]``: all query heads' value maps stacked (one GEMM for every head)."""
        return self.W_V.repeat_interleave(self.group, dim=0).reshape(-1, self.W_V.shape[-1]).contiguous()

    @cached_property
    def W_O_flat(self) -> Tensor:
        """``[d_model, head·d_head]``: the output projection as one matrix."""
        return self.W_O.permute(1, 0, 2).reshape(self.W_O.shape[1], -1).contiguous()


@dataclass(frozen=True)
class FrozenMLP:
    """One MLP sublayer with frozen activations: ``x ↦ norm_out(W_out (slope ⊙ W_in norm_in(x)))``.

    ``W_in: [d_mlp, d_model]``, ``W_out: [d_model, d_mlp]``, ``slope: [pos, d_mlp]`` (gated: ``act(gate)``;
    plain: ``act(u)/u``), ``bias: [pos, d_model]`` the constant the sublayer adds to the residual.
    """

    W_in: Tensor
    W_out: Tensor
    slope: Tensor
    norm_in: FrozenNorm | None
    norm_out: FrozenNorm | None
    bias: Tensor


@dataclass(frozen=True)
class Target:
    """The scalar to decompose at position ``pos`` (``-1``: the last token): ``Σ_k coef_k · logit_k``, or (a
    **read-out**, ``direction`` set) ``direction · resid_layer[pos]``, the residual stream after decoder block
    ``layer`` read along ``direction: [d_model]`` (a probe's class direction, a difference of class means, a user's
    vector; ``name`` says which, for the output).

    >>> Target.logit(42)              # the logit of token 42
    >>> Target.diff(42, 7)            # logit(42) − logit(7)
    >>> Target.readout(w, layer=3, pos=5, name="probe adj_ant")   # w · resid_3[5]
    """

    coef: tuple[tuple[int, float], ...]
    pos: int = -1
    direction: Tensor | None = field(default=None, compare=False)
    layer: int | None = None
    name: str = ""

    @classmethod
    def logit(cls, token: int, pos: int = -1) -> Target:
        return cls(((int(token), 1.0),), pos)

    @classmethod
    def diff(cls, token: int, other: int, pos: int = -1) -> Target:
        return cls(((int(token), 1.0), (int(other), -1.0)), pos)

    @classmethod
    def readout(cls, direction: Tensor, layer: int, pos: int = -1, name: str = "") -> Target:
        """``y = direction · resid_layer[pos]``; ``direction: [d_model]``, ``layer`` a decoder block (``≥ 0``)."""
        direction = torch.as_tensor(direction).detach().reshape(-1).cpu()
        if layer < 0:
            raise ValueError(f"a read-out's layer counts blocks from 0 (got {layer})")
        return cls((), int(pos), direction, int(layer), name)

    @property
    def is_readout(self) -> bool:
        return self.direction is not None

    @property
    def tokens(self) -> list[int]:
        return [k for k, _ in self.coef]


@dataclass(frozen=True)
class Surrogate:
    """The frozen linear map of one forward pass (build with :func:`build_surrogate`).

    ``input_ids: [pos]``; ``embed: [pos, d_model]`` token embeddings (times the model's embedding scale, e.g.
    Gemma's √d_model: the scale belongs to the embedding source), ``pos_embed: [pos, d_model] | None`` (learned
    absolute positions), ``x0 = embed + pos_embed``; ``attn[l]``, ``mlp[l]`` the frozen sublayers;
    ``final_norm`` frozen; ``W_U: [d_vocab, d_model]``, ``b_U: [d_vocab] | None``; ``logits: [pos, d_vocab]``
    the model's real logits (fp32, after any final soft-cap), kept to check completeness and the argmax tracer's
    error. ``parallel``: the layer's attention and MLP read the same state (GPT-NeoX's parallel residual), so
    there is one state per layer instead of one per sublayer (see :meth:`state_in`). ``final_softcap``: the cap
    ``c`` of a final-logit soft-cap ``c·tanh(z/c)`` (Gemma-2), with ``pre_logits: [pos, d_vocab]`` the model's
    logits ``z`` before it (see :func:`logit_slopes`). ``real_resid: [layer, pos, d_model]``: the model's own
    residual stream after each decoder block (fp32), the real value of a read-out target.
    """

    input_ids: Tensor
    embed: Tensor
    pos_embed: Tensor | None
    attn: tuple[FrozenAttention, ...]
    mlp: tuple[FrozenMLP, ...]
    final_norm: FrozenNorm
    W_U: Tensor
    b_U: Tensor | None
    logits: Tensor
    arch: str = ""
    tokens: tuple[str, ...] = field(default=(), compare=False)
    parallel: bool = False
    final_softcap: float | None = None
    pre_logits: Tensor | None = field(default=None, compare=False)
    real_resid: Tensor | None = field(default=None, compare=False)

    @property
    def n_layers(self) -> int:
        return len(self.attn)

    @property
    def n_states(self) -> int:
        """Residual states ``x_0 … x_{n_states − 1}``: ``2L + 1`` (one after each sublayer), ``L + 1`` (parallel)."""
        return self.n_layers + 1 if self.parallel else 2 * self.n_layers + 1

    def state_in(self, layer: int, sub: str) -> int:
        """Index of the state that sublayer ``sub`` (``"attn"`` or ``"mlp"``) of ``layer`` reads; it writes
        ``state_in + 1``. Sequential: attention ``2l → 2l+1``, MLP ``2l+1 → 2l+2``; parallel: both ``l → l+1``."""
        if self.parallel:
            return layer
        return 2 * layer + (sub == "mlp")

    @property
    def n_pos(self) -> int:
        return self.embed.shape[0]

    @property
    def n_heads(self) -> int:
        return self.attn[0].n_heads

    @property
    def x0(self) -> Tensor:
        """The input residual ``[pos, d_model]``: token embedding (+ learned position embedding)."""
        return self.embed if self.pos_embed is None else self.embed + self.pos_embed

    def resolve_pos(self, pos: int) -> int:
        p = pos + self.n_pos if pos < 0 else pos
        if not 0 <= p < self.n_pos:
            raise IndexError(f"position {pos} outside a prompt of {self.n_pos} tokens")
        return p

    def upto(self, layer: int) -> Surrogate:
        """The surrogate cut after decoder block ``layer``: blocks ``0 … layer`` only, so its last state is
        ``resid_layer`` (a read-out's state). The final norm and unembedding are kept but unused by a read-out."""
        if not 0 <= layer < self.n_layers:
            raise TracingError(f"a read-out at layer {layer} is outside a model of {self.n_layers} layers "
                               f"(0..{self.n_layers - 1})")
        if layer == self.n_layers - 1:
            return self
        resid = None if self.real_resid is None else self.real_resid[: layer + 1]
        return replace(self, attn=self.attn[: layer + 1], mlp=self.mlp[: layer + 1], real_resid=resid)

    def with_patterns(self, patterns: list[Tensor]) -> Surrogate:
        """A copy whose attention patterns are replaced (``patterns[l]: [head, pos, pos]``); biases kept."""
        return replace(self, attn=tuple(replace(a, pattern=p) for a, p in zip(self.attn, patterns, strict=True)))


# ------------------------------------------------------------------------------- the frozen linear map
def attn_linear(att: FrozenAttention, x: Tensor) -> Tensor:
    """Linear part of the attention sublayer: ``x: [pos, d] → [pos, d]``,
    ``Post_t Σ_h W_O^h Σ_s A_h[t, s] M_s W_V^h Pre_s x[s]``."""
    T, H, dh = x.shape[0], att.n_heads, att.d_head
    v = att.values(_lin(att.norm_in)(x)).view(T, H, dh).transpose(0, 1)  # [head, pos, d_head]
    z = torch.einsum("hts,hsk->htk", att.pattern, v)  # [head, pos, d_head]
    return _lin(att.norm_out)(torch.einsum("hdk,htk->td", att.W_O, z))


def attn_linear_T(att: FrozenAttention, rho: Tensor) -> Tensor:
    """Transpose (VJP) of :func:`attn_linear`: ``ρ: [pos, d] → [pos, d]``."""
    T = rho.shape[0]
    beta = torch.einsum("hdk,td->htk", att.W_O, _lin_T(att.norm_out)(rho))  # [head, pos(t), d_head]
    gz = torch.einsum("hts,htk->hsk", att.pattern, beta)  # [head, pos(s), d_head]
    return _lin_T(att.norm_in)(att.values_T(gz.transpose(0, 1).reshape(T, -1)))


def mlp_linear(mlp: FrozenMLP, x: Tensor, pos: Tensor | None = None) -> Tensor:
    """Linear part of the MLP sublayer: ``x: [pos, d] → [pos, d]``, ``Post W_out (slope ⊙ W_in Pre x)``
    (``x: [n, d]`` with ``pos: [n]`` for selected positions)."""
    slope = mlp.slope if pos is None else mlp.slope[pos]
    u = _lin(mlp.norm_in)(x, pos) @ mlp.W_in.T  # [n, d_mlp]
    return _lin(mlp.norm_out)((slope * u) @ mlp.W_out.T, pos)


def mlp_linear_T(mlp: FrozenMLP, rho: Tensor, pos: Tensor | None = None) -> Tensor:
    """Transpose (VJP) of :func:`mlp_linear`, same shapes."""
    slope = mlp.slope if pos is None else mlp.slope[pos]
    g = (_lin_T(mlp.norm_out)(rho, pos) @ mlp.W_out) * slope  # [n, d_mlp]
    return _lin_T(mlp.norm_in)(g @ mlp.W_in, pos)


def frozen_forward(sur: Surrogate, x0: Tensor, with_bias: bool = True) -> list[Tensor]:
    """The residual states ``[x_0, …, x_{n_states − 1}]`` (each ``[pos, d_model]``) of the frozen map from ``x0``.

    Sequential: ``x_{k+1} = x_k + Sub_k x_k (+ bias_k)`` per sublayer; parallel residual:
    ``x_{l+1} = x_l + Attn_l x_l + MLP_l x_l (+ a_l + m_l)`` per layer. With ``with_bias=False`` the map is linear,
    so feeding a masked ``x0`` gives the part of every state that comes from the unmasked sources only.
    """
    states = [x0]
    x = x0
    for att, mlp in zip(sur.attn, sur.mlp, strict=True):
        if sur.parallel:
            x = x + attn_linear(att, x) + mlp_linear(mlp, x) + (att.bias + mlp.bias if with_bias else 0)
            states.append(x)
            continue
        x = x + attn_linear(att, x) + (att.bias if with_bias else 0)
        states.append(x)
        x = x + mlp_linear(mlp, x) + (mlp.bias if with_bias else 0)
        states.append(x)
    return states


def logit_slopes(sur: Surrogate, tokens: list[int], pos: int = -1) -> Tensor:
    """``[len(tokens)]``: the frozen slope ``s = tanh(z/c) / (z/c)`` of a final soft-cap at each token's pre-cap
    logit ``z`` (position ``pos``), so the model's capped logit is exactly ``s · z``; ones without a soft-cap.

    The tracer decomposes the *capped* logit the model outputs: ``s`` is frozen like a norm's divisor, and ``z``
    is linear in the residual stream, so ``s · z`` decomposes exactly. The limit at ``z = 0`` is 1.
    """
    if sur.final_softcap is None or sur.pre_logits is None:
        return torch.ones(len(tokens), dtype=sur.W_U.dtype)
    z = sur.pre_logits[sur.resolve_pos(pos), torch.tensor(tokens, dtype=torch.long)].double() / sur.final_softcap
    small = z.abs() < 1e-6
    s = torch.where(small, torch.ones_like(z), torch.tanh(z) / torch.where(small, torch.ones_like(z), z))
    return s.to(sur.W_U.dtype)


def scoped(sur: Surrogate, target: Target) -> Surrogate:
    """The surrogate a target reads: cut after block ``target.layer`` for a read-out (:meth:`Surrogate.upto`),
    whole for a logit."""
    return sur.upto(target.layer) if target.is_readout else sur


def target_info(sur: Surrogate, target: Target) -> dict:
    """What the target scalar is, for the trace output: ``definition`` (``"logit"``, ``"capped_logit"`` under a
    final soft-cap, or ``"readout"``) and, with a cap, ``softcap: {cap, tokens: [[token, coef, pre_cap_logit,
    slope]]}``; a read-out adds ``readout: {layer, pos, name, norm}`` (``norm``: ``‖w‖``)."""
    if target.is_readout:
        return {"definition": "readout",
                "description": f"w · resid_{target.layer}[{sur.resolve_pos(target.pos)}]: the residual stream after "
                               f"decoder block {target.layer} read along w ({target.name or 'a given direction'})",
                "softcap": None,
                "readout": {"layer": target.layer, "pos": sur.resolve_pos(target.pos), "name": target.name,
                            "norm": float(target.direction.double().norm())}}
    if sur.final_softcap is None:
        return {"definition": "logit", "softcap": None}
    t = sur.resolve_pos(target.pos)
    slopes = logit_slopes(sur, target.tokens, target.pos).tolist()
    return {"definition": "capped_logit",
            "description": "the model's soft-capped logit c·tanh(z/c) = s·z, with the slope s = tanh(z/c)/(z/c) "
                           "frozen per token at its pre-cap logit z",
            "softcap": {"cap": sur.final_softcap,
                        "tokens": [[k, c, float(sur.pre_logits[t, k]), s]
                                   for (k, c), s in zip(target.coef, slopes, strict=True)]}}


def target_vector(sur: Surrogate, target: Target) -> tuple[Tensor, float]:
    """``e = Σ_k coef_k s_k W_U[k]: [d_model]`` and the unembedding bias constant ``Σ_k coef_k s_k b_U[k]``
    (``s_k`` the frozen soft-cap slope of :func:`logit_slopes`, 1 without a final soft-cap)."""
    idx = torch.tensor(target.tokens, dtype=torch.long)
    coef = torch.tensor([c for _, c in target.coef], dtype=sur.W_U.dtype)
    coef = coef * logit_slopes(sur, target.tokens, target.pos)
    e = coef @ sur.W_U[idx]
    b = float(coef @ sur.b_U[idx]) if sur.b_U is not None else 0.0
    return e, b


def readout_vector(sur: Surrogate, target: Target) -> tuple[Tensor, float]:
    """``ρ_out: [d_model]`` with ``y = ρ_out · x_{2L}[T] + const`` and that constant (final-norm bias and b_U).
    A read-out: ``ρ_out = w`` on the last state of the surrogate cut after its layer, and no constant."""
    if target.is_readout:
        w = target.direction.to(sur.embed.dtype)
        if w.shape != (sur.embed.shape[1],):
            raise TracingError(f"the read-out direction has {w.numel()} entries; the model's d_model is "
                               f"{sur.embed.shape[1]}")
        return w, 0.0
    e, b_u = target_vector(sur, target)
    t = torch.tensor([sur.resolve_pos(target.pos)])
    rho = sur.final_norm.apply_T(e[None], t)[0]
    const = b_u + (float(e @ sur.final_norm.bias) if sur.final_norm.bias is not None else 0.0)
    return rho, const


def readout(sur: Surrogate, target: Target, x_last: Tensor, with_bias: bool = True) -> Tensor:
    """The target scalar from the last residual state ``x_last: [pos, d_model]`` (of :func:`scoped`'s surrogate
    for a read-out)."""
    rho, const = readout_vector(sur, target)
    y = rho @ x_last[sur.resolve_pos(target.pos)]
    return y + const if with_bias else y


def backward(sur: Surrogate, target: Target) -> list[Tensor]:
    """``g_k = ∂y/∂x_k: [pos, d_model]`` for every state ``k`` of the frozen map (one backward pass).

    ``g_last = ρ_out`` at the target position; ``g_k = g_{k+1} + Sub_kᵀ g_{k+1}`` (parallel residual:
    ``g_l = g_{l+1} + Attn_lᵀ g_{l+1} + MLP_lᵀ g_{l+1}``). Independent of the input (the map is linear).
    A read-out's gradients are those of the surrogate cut after its layer (:func:`scoped`): ``g_last = w`` at
    ``(layer, pos)``, and the states of blocks ``0 … layer`` only.
    """
    sur = scoped(sur, target)
    rho, _ = readout_vector(sur, target)
    g = torch.zeros_like(sur.embed)
    g[sur.resolve_pos(target.pos)] = rho
    grads = [g]
    for att, mlp in zip(reversed(sur.attn), reversed(sur.mlp), strict=True):
        if sur.parallel:
            g = g + attn_linear_T(att, g) + mlp_linear_T(mlp, g)
            grads.append(g)
            continue
        g = g + mlp_linear_T(mlp, g)
        grads.append(g)
        g = g + attn_linear_T(att, g)
        grads.append(g)
    return grads[::-1]


def real_target(sur: Surrogate, target: Target) -> float:
    """The model's own value of the target scalar (from the recorded fp32 logits, soft-capped where the model
    caps them; a read-out: ``w · resid_layer[pos]`` of the recorded block output, in float64)."""
    if target.is_readout:
        if sur.real_resid is None:
            raise TracingError("this surrogate recorded no residual stream (built by an older ivlens?): rebuild it")
        x = sur.real_resid[target.layer, sur.resolve_pos(target.pos)]
        return float(target.direction.double() @ x.double())
    row = sur.logits[sur.resolve_pos(target.pos)]
    return float(sum(c * row[k] for k, c in target.coef))


# ------------------------------------------------------------------------------- building from a model
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
