"""The frozen linear surrogate itself and its maths: no model, no hooks (the method, the equations and the shape
vocabulary: :mod:`ivlens.tracing.surrogate`; building one from a model: :mod:`ivlens.tracing.surrogate.from_model`).

The frozen pieces (:class:`FrozenNorm`, :class:`FrozenAttention`, :class:`FrozenMLP`), the scalar to decompose
(:class:`Target`), the map of one forward pass (:class:`Surrogate`), its sublayers' linear parts and their transposes
(:func:`attn_linear`, :func:`mlp_linear` and ``_T``), the residual states from an input (:func:`frozen_forward`),
the target's read-out (:func:`readout`) and the gradients of the target with respect to every state
(:func:`backward`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import torch
from torch import Tensor

from ivlens.errors import IvlensError


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


def norm_linear(norm: FrozenNorm | None):
    """The frozen norm's linear map ``x -> norm(x)`` (its :meth:`FrozenNorm.apply`; the identity for no norm)."""
    return norm.apply if norm is not None else _ident


def norm_linear_T(norm: FrozenNorm | None):
    """The transpose of :func:`norm_linear` (:meth:`FrozenNorm.apply_T`), for backward passes."""
    return norm.apply_T if norm is not None else _ident


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
    v = att.values(norm_linear(att.norm_in)(x)).view(T, H, dh).transpose(0, 1)  # [head, pos, d_head]
    z = torch.einsum("hts,hsk->htk", att.pattern, v)  # [head, pos, d_head]
    return norm_linear(att.norm_out)(torch.einsum("hdk,htk->td", att.W_O, z))


def attn_linear_T(att: FrozenAttention, rho: Tensor) -> Tensor:
    """Transpose (VJP) of :func:`attn_linear`: ``ρ: [pos, d] → [pos, d]``."""
    T = rho.shape[0]
    beta = torch.einsum("hdk,td->htk", att.W_O, norm_linear_T(att.norm_out)(rho))  # [head, pos(t), d_head]
    gz = torch.einsum("hts,htk->hsk", att.pattern, beta)  # [head, pos(s), d_head]
    return norm_linear_T(att.norm_in)(att.values_T(gz.transpose(0, 1).reshape(T, -1)))


def mlp_linear(mlp: FrozenMLP, x: Tensor, pos: Tensor | None = None) -> Tensor:
    """Linear part of the MLP sublayer: ``x: [pos, d] → [pos, d]``, ``Post W_out (slope ⊙ W_in Pre x)``
    (``x: [n, d]`` with ``pos: [n]`` for selected positions)."""
    slope = mlp.slope if pos is None else mlp.slope[pos]
    u = norm_linear(mlp.norm_in)(x, pos) @ mlp.W_in.T  # [n, d_mlp]
    return norm_linear(mlp.norm_out)((slope * u) @ mlp.W_out.T, pos)


def mlp_linear_T(mlp: FrozenMLP, rho: Tensor, pos: Tensor | None = None) -> Tensor:
    """Transpose (VJP) of :func:`mlp_linear`, same shapes."""
    slope = mlp.slope if pos is None else mlp.slope[pos]
    g = (norm_linear_T(mlp.norm_out)(rho, pos) @ mlp.W_out) * slope  # [n, d_mlp]
    return norm_linear_T(mlp.norm_in)(g @ mlp.W_in, pos)


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
