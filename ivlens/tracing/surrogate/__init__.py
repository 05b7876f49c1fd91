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

The package: :mod:`~ivlens.tracing.surrogate.frozen_map` holds the frozen map itself and its maths (the frozen
sublayers, the target, the forward and transposed maps; no model, no hooks), and
:mod:`~ivlens.tracing.surrogate.from_model` builds it from an HF model (one forward pass with hooks through the
architecture adapter, then every recorded non-linear factor frozen).
"""

from __future__ import annotations

from .from_model import build_surrogate, eager_attention, plain_slope
from .frozen_map import (
    FrozenAttention,
    FrozenMLP,
    FrozenNorm,
    Surrogate,
    Target,
    TracingError,
    attn_linear,
    attn_linear_T,
    backward,
    frozen_forward,
    logit_slopes,
    mlp_linear,
    mlp_linear_T,
    readout,
    readout_vector,
    real_target,
    scoped,
    target_info,
    target_vector,
)

__all__ = [
    "FrozenAttention", "FrozenMLP", "FrozenNorm", "Surrogate", "Target", "TracingError", "attn_linear",
    "attn_linear_T", "backward", "build_surrogate", "eager_attention", "frozen_forward", "logit_slopes", "mlp_linear",
    "mlp_linear_T", "plain_slope", "readout", "readout_vector", "real_target", "scoped", "target_info",
    "target_vector",
]
