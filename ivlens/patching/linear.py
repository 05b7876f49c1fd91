"""The linear (first-order) estimate of every patch: attribution patching, beside the exact engine's effect.

**Definition.** A row patches the layer set ``S`` at target position ``t``: after every ``l ∈ S`` the residual
``resid_post[l][t]`` is replaced by the IV ``iv_l``. Its effect is ``f = y(patched) − y(clean)``, ``y`` the scored
logit: the label's, ``z_y`` (the ``delta_logit_vs_target`` column), or ``z_y − z_alt`` (``delta_logit_diff_vs_target``).
Put the replacement on a path: after every ``l ∈ S``,

    resid[l][t] := resid[l][t] + ε · (iv_l − resid[l][t])        (ε = 1: the replacement, the row's effect)

where ``resid[l][t]`` is the value the run has there (in a patched run it already carries the patches below
``l``). The row's **linear estimate** is the first-order Taylor extrapolation of ``f(ε)`` from the clean run
(``ε = 0``) to the patch (``ε = 1``):

    linear_estimate(S, t) = f'(0) = Σ_{l ∈ S} ∇_{l,t} · Δ_{l,t},    ∇_{l,t} = ∂y/∂resid_post[l][t],  Δ_{l,t} = iv_l − clean_l[t]

with every gradient taken on the *clean* run. Why a sum, although the patch at a higher layer is applied on top
of the lower ones (a composition): at ``ε = 0`` no edit is active, so every edit sees the clean residual and the
total derivative of the composed map is the sum of its partial derivatives (the chain rule; each ``∇_{l,t}``
carries layer ``l``'s edit through every later layer and position). How one patch changes what a later one
replaces enters only at order ``ε²``. So the estimate is additive over layers by construction, and
``nonlinearity = effect − linear_estimate`` is everything beyond first order: the interactions the paper's thesis
is about, plus each single layer's own curvature (a single-layer row's nonlinearity is not zero either).

One consequence to keep in mind: at the **last** position a set's exact effect is its highest layer's alone (that
patch overwrites the only residual later layers read there; :mod:`ivlens.patching.engine`), while the estimate
still sums every layer's term, so there a set's nonlinearity is minus the lower layers' terms plus the highest
layer's own curvature, by construction.

**Cost.** Per sample one forward and one backward of the clean target (where the sample has an alternative
label, the two logits' cotangents share that backward, vectorised: ``is_grads_batched``), through the engine's own layer pass
(:func:`ivlens.patching.engine.layer_pass`) in the model's dtype: zero leaves ``δ_l: [positions, d_model]`` are
added to each layer's output at the patched positions, and the backward gives ``∇_{l,t}`` at every layer and
position at once. Each sample runs alone (batch of one, no padding), so its numbers do not depend on which samples
share its chunk, shard or memory budget. Every layer set's estimate is then a sum of ``|S|`` per-layer terms
(:func:`set_sums`): ranking every 4-set of a 32-layer model costs nothing beyond the gradients
(:mod:`ivlens.patching.screen`).

Shapes: ``n`` samples, ``P`` positions per sample, ``L`` layers, ``d_model``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ivlens.models.adapters import ArchitectureAdapter
from ivlens.tasks.prompts import pad_left

from .engine import EngineStats, layer_pass
from .plan import LayerSet

#: effect column → (its linear-estimate column, its nonlinearity column, the :class:`FirstOrder` field): the effects
#: the estimate is defined for
ESTIMATED = {
    "delta_logit_vs_target": ("linear_estimate", "nonlinearity", "logit"),
    "delta_logit_diff_vs_target": ("linear_estimate_logit_diff", "nonlinearity_logit_diff", "logit_diff"),
}
#: the effect whose estimate stands in for an effect without one (e.g. ``delta_prob_vs_target``)
DEFAULT_EFFECT = "delta_logit_vs_target"
#: ``--linear-estimate`` values
LINEAR_CHOICES = ("auto", "on", "off")


def linear_on(setting: str, screen: int | None, layer_sets: Sequence[LayerSet], *, score: str = "first-token",
              remote: bool = False) -> bool:
    """Whether a sweep's rows carry the linear estimate: never with the answer-level score or ``--remote`` (no
    local first-token gradient; ``on`` is refused there, :class:`ivlens.specs.PatchSpec`); else with ``on``, with
    a screen, or with ``auto`` when a set has two or more layers (what the estimate is for: interactions beyond
    first order; a singles-only sweep would pay a forward and backward per sample for a control)."""
    if setting == "off" or score == "answer" or remote:
        return False
    return setting == "on" or screen is not None or any(len(s) >= 2 for s in layer_sets)


def estimated_effect(effect: str) -> str:
    """The effect column whose linear estimate answers for ``effect``: itself where :data:`ESTIMATED` has it,
    else :data:`DEFAULT_EFFECT` (the label's logit)."""
    return effect if effect in ESTIMATED else DEFAULT_EFFECT


@dataclass(frozen=True)
class FirstOrder:
    """Per-layer first-order terms ``∇_{l,t} · Δ_{l,t}`` of ``n`` targets, float64 ``[n, P, L]``: ``logit`` for the
    label's logit, ``logit_diff`` for ``z_y − z_alt`` (NaN for a sample without an alternative label). A set's
    estimate is the sum of its layers' terms (:func:`set_sums`)."""

    logit: np.ndarray
    logit_diff: np.ndarray

    def take(self, idx: Sequence[int]) -> FirstOrder:
        """The terms of samples ``idx`` (in that order)."""
        i = np.asarray(idx, dtype=np.int64)
        return FirstOrder(self.logit[i], self.logit_diff[i])


def first_order_terms(adapter: ArchitectureAdapter, sequences: Sequence[Sequence[int]],
                      positions: Sequence[Sequence[int]], ivs: torch.Tensor, label: torch.Tensor,
                      alt: torch.Tensor | None = None, stats: EngineStats | None = None) -> FirstOrder:
    """The per-layer first-order terms of replacing ``resid_post[l][t]`` by ``ivs[l]``, for every target, position
    and layer (see the module docstring).

    Args:
        adapter: the target model's adapter (the gradient flows through the model as it is, in its dtype).
        sequences: ``n`` target prompts (token ids), each run alone.
        positions: per target, the ``P`` patched token indices (into its own tokens; may repeat).
        ivs: ``[layer, d_model]`` the IVs (one source's row of :func:`ivlens.patching.engine.source_vectors`).
        label: ``[n]`` the scored label token per target; alt: ``[n]`` the alternative label (``-1``: none) or
            ``None``.
        stats: counters; ``gradient_evals`` grows by ``L × T`` per target (the forward; the backward is about
            twice that; both scored logits share one vectorised backward).

    Returns:
        :class:`FirstOrder`, float64 ``[n, P, L]`` on the CPU.

    >>> fo = first_order_terms(adapter, [(5, 6, 7)], [(0, 2)], ivs[0], torch.tensor([42]))
    >>> fo.logit.shape
    (1, 2, 4)
    """
    n, L = len(sequences), adapter.n_layers
    P = len(positions[0]) if n else 0
    if any(len(p) != P for p in positions):
        raise ValueError("every target needs the same number of positions")
    if ivs.dim() != 2 or ivs.shape[0] != L:
        raise ValueError(f"ivs must be [layer, d_model] = [{L}, d_model], got {tuple(ivs.shape)}")
    logit = np.zeros((n, P, L))
    diff = np.full((n, P, L), np.nan)
    embed_dev = adapter.embed.weight.device
    for i, seq in enumerate(sequences):
        a = int(alt[i]) if alt is not None else -1
        g_label, g_alt, delta = _gradients(adapter, seq, positions[i], ivs, int(label[i]), a, embed_dev)
        logit[i] = _dots(g_label, delta)
        if g_alt is not None:
            diff[i] = logit[i] - _dots(g_alt, delta)
        if stats is not None:
            stats.gradient_evals += L * len(seq)
    return FirstOrder(logit, diff)


def _gradients(adapter: ArchitectureAdapter, seq: Sequence[int], positions: Sequence[int], ivs: torch.Tensor,
               label: int, alt: int, embed_dev: torch.device
               ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, list[torch.Tensor]]:
    """One target alone: ``∇ z_label`` (and ``∇ z_alt`` with ``alt ≥ 0``) at every layer's patched positions,
    ``L × [P, d_model]`` each, from one backward (with an alternative, the two logits' one-hot cotangents ride one
    vectorised backward, ``is_grads_batched``), and ``Δ_l = iv_l − clean_l[positions]``, ``L × [P, d_model]``."""
    for p in positions:
        if not 0 <= p < len(seq):
            raise ValueError(f"patch position {p} outside the target prompt ({len(seq)} tokens)")
    batch = pad_left([tuple(seq)], 0).to(embed_dev)  # one prompt: no padding
    leaves: list[torch.Tensor] = []
    deltas: list[torch.Tensor] = []

    def add_leaf(layer: int, h: torch.Tensor) -> torch.Tensor:  # h: [1, pos, d_model]
        idx = torch.tensor(list(positions), device=h.device)
        deltas.append(ivs[layer].to(h.device, h.dtype) - h[0, idx].detach())  # [P, d_model]
        leaf = torch.zeros((len(positions), h.shape[-1]), dtype=h.dtype, device=h.device, requires_grad=True)
        leaves.append(leaf)
        return h.index_add(1, idx, leaf[None])  # a repeated position gets the sum of its leaves: same gradient

    with torch.enable_grad(), _weights_frozen(adapter.model):
        h, _, _, _ = layer_pass(adapter, batch, after_layer=add_leaf)
        z = adapter.logits(h[:, -1])[0]  # [d_vocab]
        if alt < 0:
            return list(torch.autograd.grad(z[label], leaves)), None, deltas
        scored = torch.tensor([label, alt], device=z.device)
        cot = torch.nn.functional.one_hot(scored, z.shape[-1]).to(z.dtype)  # [2, d_vocab]: z_label, z_alt
        grads = torch.autograd.grad(z, leaves, grad_outputs=cot, is_grads_batched=True)  # L × [2, P, d_model]
    return [g[0] for g in grads], [g[1] for g in grads], deltas


@contextmanager
def _weights_frozen(model: torch.nn.Module) -> Iterator[None]:
    """No gradient for the weights during the pass (autograd then keeps only what the residual's gradient
    needs); each weight's ``requires_grad`` is restored on exit."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def _dots(grads: list[torch.Tensor], deltas: list[torch.Tensor]) -> np.ndarray:
    """``[P, L]`` float64: ``grads[l][p] · deltas[l][p]`` (products and sums in float64)."""
    return torch.stack([(g.double() * d.double()).sum(-1) for g, d in zip(grads, deltas, strict=True)], 1).cpu().numpy()


def set_sums(terms: np.ndarray, layer_sets: Sequence[LayerSet]) -> np.ndarray:
    """Every layer set's estimate: ``out[..., s] = Σ_{l ∈ layer_sets[s]} terms[..., l]``.

    Args:
        terms: ``[..., L]`` per-layer first-order terms (e.g. :attr:`FirstOrder.logit`, ``[n, P, L]``).
        layer_sets: the sets, in the order of the result.

    Returns:
        ``[..., len(layer_sets)]`` float64; memory is one ``[..., sets of one size]`` array at a time.

    >>> set_sums(np.array([1.0, 2.0, 4.0]), [(0,), (0, 2), (0, 1, 2)])
    array([1., 5., 7.])
    """
    terms = np.asarray(terms, dtype=np.float64)
    out = np.zeros((*terms.shape[:-1], len(layer_sets)))
    by_size: dict[int, list[int]] = {}
    for j, s in enumerate(layer_sets):
        by_size.setdefault(len(s), []).append(j)
    for k, cols in by_size.items():
        idx = np.array([layer_sets[j] for j in cols], dtype=np.int64).reshape(len(cols), k)
        acc = np.zeros((*terms.shape[:-1], len(cols)))
        for m in range(k):  # one layer of every set at a time: [..., n_sets_k]
            acc += terms[..., idx[:, m]]
        out[..., cols] = acc
    return out


def estimate_columns(terms: FirstOrder, layer_sets: Sequence[LayerSet], cols: dict[str, np.ndarray]
                     ) -> dict[str, np.ndarray]:
    """The patch rows' estimate columns: for every effect of :data:`ESTIMATED`, its ``linear_estimate`` column
    (the set's sum of terms) and ``nonlinearity = effect − linear_estimate``, float64 ``[rows]``.

    Args:
        terms: ``[n, P, L]`` per-layer terms of the rows' ``n`` samples.
        layer_sets: the plan's sets.
        cols: the rows' columns so far (``n × P × sets`` rows, sample-major, then position, then set), with the
            effect columns.
    """
    out: dict[str, np.ndarray] = {}
    for effect, (est_col, nl_col, field) in ESTIMATED.items():
        est = set_sums(getattr(terms, field), layer_sets).reshape(-1)  # [n * P * sets]
        out[est_col] = est
        out[nl_col] = np.asarray(cols[effect], dtype=np.float64) - est
    return out
