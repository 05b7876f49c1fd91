"""Attribution graph: the exact total contribution of every edge, from one forward and one backward pass.

Under the frozen map (:mod:`ivlens.tracing.surrogate`) the target scalar ``y`` is a sum over all paths from
the sources (token embeddings, position embeddings, bias terms) to the output. The graph's nodes are the
residual states ``x_k[t]`` (``k = 0 … 2L``, ``t`` a position) and its edges are one sublayer's ways of moving
mass from state ``k`` to ``k+1``:

- attention sublayer ``l`` (``k = 2l``): ``head h, s → t``, the ``skip`` (residual, ``t → t``) and the
  sublayer's ``bias`` (a source entering at ``t``);
- MLP sublayer ``l`` (``k = 2l+1``): ``mlp`` at ``t``, ``skip`` and ``bias``;
- the inputs: ``embed`` (token ``s``) and ``pos_embed`` into ``x_0[s]``; the ``final_bias`` (final-norm bias and
  unembedding bias) into the output.

With ``f_k`` the forward states and ``g_k = ∂y/∂x_k`` the gradients of the frozen map, an edge's total
contribution over all paths through it is ``g_{k+1}[t]ᵀ M_edge f_k[s]``; for a head

    E[l, h, t, s] = A_h[t, s] · (W_O^hᵀ Post_tᵀ g_{2l+1}[t]) · (W_V^h Pre_s f_{2l}[s])

so all heads, positions and layers cost ``O(L · H · T² · d_head)`` time and ``L · H · T²`` memory.

**Parallel residual** (GPT-NeoX): attention and MLP of layer ``l`` both read ``x_l`` and write ``x_{l+1}``, so the
states are ``x_0 … x_L`` and layer ``l``'s edges are its heads, its ``mlp``, *one* skip and both biases, all from
``x_l`` to ``x_{l+1}`` (``mlp_skip`` is ``None``; ``attn_skip`` is the layer's skip).

**Cuts.** The edges of any sublayer (parallel: of any layer) plus the bias sources that enter *after* it sum to
``y``: every path either crosses the cut or starts behind it (:func:`cut_totals`). With ``sources`` restricted to some positions
(``--start-pos/--end-pos``) and biases off, the forward pass starts from those embeddings only, so every edge
carries the mass of the paths *leaving those positions*, and the cuts sum to that part of ``y``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .surrogate.frozen_map import (
    Surrogate,
    Target,
    backward,
    frozen_forward,
    mlp_linear,
    norm_linear,
    norm_linear_T,
    readout_vector,
    real_target,
    scoped,
    target_info,
)

EDGE_KINDS = ("embed", "pos_embed", "head", "attn_skip", "attn_bias", "mlp", "mlp_skip", "mlp_bias", "final_bias")


@dataclass(frozen=True)
class AttributionGraph:
    """Edge contributions of one prompt and target (see the module docstring for the edge kinds).

    ``head: [layer, head, pos(t), pos(s)]``; ``attn_skip, attn_bias, mlp, mlp_skip, mlp_bias: [layer, pos]``
    (``parallel``: ``attn_skip`` is the skip across the whole layer and ``mlp_skip`` is ``None``);
    ``embed, pos_embed: [pos]``; ``final_bias`` a float. ``value`` is the surrogate's ``y`` (the sum over the
    selected sources), ``real`` the model's own target value; ``sources: [pos]`` the positions whose
    embeddings were fed forward; ``with_bias`` whether bias sources are included; ``target_info`` what ``y`` is
    (the logit, or a soft-capped logit through its frozen slope: :func:`~ivlens.tracing.surrogate.target_info`).
    """

    target: Target
    value: float
    real: float
    head: Tensor
    attn_skip: Tensor
    attn_bias: Tensor
    mlp: Tensor
    mlp_skip: Tensor | None
    mlp_bias: Tensor
    embed: Tensor
    pos_embed: Tensor | None
    final_bias: float
    sources: Tensor
    with_bias: bool
    tokens: tuple[str, ...] = field(default=(), compare=False)
    parallel: bool = False
    target_info: dict = field(default_factory=lambda: {"definition": "logit", "softcap": None}, compare=False)

    @property
    def n_layers(self) -> int:
        return self.head.shape[0]

    @property
    def n_heads(self) -> int:
        return self.head.shape[1]

    @property
    def n_pos(self) -> int:
        return self.head.shape[2]

    @property
    def target_pos(self) -> int:
        return self.target.pos + self.n_pos if self.target.pos < 0 else self.target.pos

    @property
    def completeness_rel_err(self) -> float:
        """``|Σ contributions − real| / |real|`` (only meaningful for the full graph: all sources, biases on)."""
        return abs(self.value - self.real) / max(abs(self.real), 1e-12)

    def layer_mass(self) -> Tensor:
        """``[layer, 3]``: absolute mass per layer through heads, the attention bias, and the MLP."""
        return torch.stack([self.head.abs().sum((1, 2, 3)), self.attn_bias.abs().sum(-1),
                            self.mlp.abs().sum(-1)], dim=-1)

    def head_mass(self) -> Tensor:
        """``[layer, head]``: absolute mass of each head's edges, ``Σ_{t,s} |E[l,h,t,s]|``."""
        return self.head.abs().sum((2, 3))


def source_mask(n_pos: int, start_pos: int | None = None, end_pos: int | None = None) -> Tensor:
    """Boolean ``[pos]`` mask of the source positions ``start_pos … end_pos`` (inclusive; negative from the end)."""
    def res(p: int | None, default: int) -> int:
        return default if p is None else (p + n_pos if p < 0 else p)
    a, b = res(start_pos, 0), res(end_pos, n_pos - 1)
    if not (0 <= a <= b < n_pos):
        raise IndexError(f"source range {start_pos}..{end_pos} is empty or outside a prompt of {n_pos} tokens")
    mask = torch.zeros(n_pos, dtype=torch.bool)
    mask[a : b + 1] = True
    return mask


def forward_states(sur: Surrogate, sources: Tensor | None = None, with_bias: bool = True) -> list[Tensor]:
    """Forward states of the frozen map from the embeddings at ``sources`` (``[pos]`` bool, default all)."""
    x0 = sur.x0 if sources is None else sur.x0 * sources[:, None].to(sur.x0.dtype)
    return frozen_forward(sur, x0, with_bias=with_bias)


def compute_graph(sur: Surrogate, target: Target, sources: Tensor | None = None,
                  with_bias: bool | None = None, *, states: list[Tensor] | None = None,
                  grads: list[Tensor] | None = None) -> AttributionGraph:
    """All edge contributions for ``target`` (one forward + one backward pass of the frozen map).

    ``sources``: ``[pos]`` bool mask of the embedding positions whose paths are counted (default all).
    ``with_bias`` defaults to ``True`` for all sources and ``False`` for a restricted set (bias terms are
    not "from" any position). A read-out target (:meth:`~ivlens.tracing.surrogate.Target.readout`) at layer ``l``
    is traced on the surrogate cut after block ``l``: the graph has ``l + 1`` layers.

    ``states``, ``grads``: this call's :func:`forward_states` and :func:`~ivlens.tracing.surrogate.backward`
    (of the :func:`~ivlens.tracing.surrogate.scoped` surrogate) when the caller has them already (the gradients
    do not depend on ``sources``; a trace's full graph, restricted graph and path search share them).
    """
    sur = scoped(sur, target)
    T = sur.n_pos
    full = sources is None or bool(sources.all())
    sources = torch.ones(T, dtype=torch.bool) if sources is None else sources
    with_bias = full if with_bias is None else with_bias
    f = forward_states(sur, sources, with_bias) if states is None else states
    g = backward(sur, target) if grads is None else grads
    heads, a_skip, a_bias, m_out, m_skip, m_bias = [], [], [], [], [], []
    zeros = torch.zeros(T, dtype=sur.embed.dtype)
    for l, (att, mlp) in enumerate(zip(sur.attn, sur.mlp, strict=True)):  # noqa: E741
        ka, km = sur.state_in(l, "attn"), sur.state_in(l, "mlp")
        x, gm = f[ka], g[ka + 1]  # attention reads x, its output is read by gm
        m, gx = f[km], g[km + 1]  # the MLP's
        H, dh = att.n_heads, att.d_head
        v = att.values(norm_linear(att.norm_in)(x)).view(T, H, dh).transpose(0, 1)  # [head, pos(s), d_head]
        beta = (norm_linear_T(att.norm_out)(gm) @ att.W_O_flat).view(T, H, dh).transpose(0, 1)  # [head, pos(t), d_head]
        heads.append(att.pattern * torch.einsum("htk,hsk->hts", beta, v))  # [head, t, s]
        a_skip.append((gm * x).sum(-1))
        a_bias.append((gm * att.bias).sum(-1) if with_bias else zeros)
        m_out.append((gx * mlp_linear(mlp, m)).sum(-1))
        if not sur.parallel:  # parallel: one skip per layer (a_skip)
            m_skip.append((gx * m).sum(-1))
        m_bias.append((gx * mlp.bias).sum(-1) if with_bias else zeros)
    mask = sources.to(sur.embed.dtype)[:, None]
    embed = (g[0] * sur.embed * mask).sum(-1)
    pos_embed = None if sur.pos_embed is None else (g[0] * sur.pos_embed * mask).sum(-1)
    _, const = readout_vector(sur, target)
    final_bias = const if with_bias else 0.0
    a_bias_t, m_bias_t = torch.stack(a_bias), torch.stack(m_bias)
    value = float(embed.sum() + (pos_embed.sum() if pos_embed is not None else 0.0)
                  + a_bias_t.sum() + m_bias_t.sum()) + final_bias
    return AttributionGraph(
        target=target, value=value, real=real_target(sur, target), head=torch.stack(heads),
        attn_skip=torch.stack(a_skip), attn_bias=a_bias_t, mlp=torch.stack(m_out),
        mlp_skip=torch.stack(m_skip) if m_skip else None, mlp_bias=m_bias_t, embed=embed, pos_embed=pos_embed,
        final_bias=final_bias, sources=sources, with_bias=with_bias, tokens=sur.tokens, parallel=sur.parallel,
        target_info=target_info(sur, target),
    )


def cut_totals(graph: AttributionGraph) -> Tensor:
    """``[n_states]``: for the input cut and each step between states, its edges plus the bias sources entering
    after it (and the final bias). Every entry equals ``graph.value`` (the completeness of every layer cut).

    Entry 0 is the input cut (embeddings + all biases). Sequential: entry ``2l+1`` is the attention sublayer of
    layer ``l``, entry ``2l+2`` its MLP sublayer (``2L + 1`` entries). Parallel residual: entry ``l+1`` is the
    whole layer ``l`` (heads, MLP, skip and both biases; ``L + 1`` entries).
    """
    L = graph.n_layers
    if graph.parallel:  # per layer: (its edges, its bias sources)
        steps = [(graph.head[l].sum() + graph.attn_skip[l].sum() + graph.mlp[l].sum() + graph.attn_bias[l].sum()
                  + graph.mlp_bias[l].sum(), graph.attn_bias[l].sum() + graph.mlp_bias[l].sum()) for l in range(L)]  # noqa: E741
    else:  # per sublayer in forward order: attn_0, mlp_0, attn_1, ...
        steps = []
        for l in range(L):  # noqa: E741
            steps.append((graph.head[l].sum() + graph.attn_skip[l].sum() + graph.attn_bias[l].sum(),
                          graph.attn_bias[l].sum()))
            steps.append((graph.mlp[l].sum() + graph.mlp_skip[l].sum() + graph.mlp_bias[l].sum(),
                          graph.mlp_bias[l].sum()))
    bias = torch.stack([b for _, b in steps])
    after = torch.cat([bias.flip(0).cumsum(0).flip(0), bias.new_zeros(1)])  # after[k] = Σ_{j >= k} bias_j
    inputs = graph.embed.sum() + (graph.pos_embed.sum() if graph.pos_embed is not None else 0.0)
    totals = [inputs + after[0]] + [edges + after[k + 1] for k, (edges, _) in enumerate(steps)]
    return torch.stack([t + graph.final_bias for t in totals])


# ------------------------------------------------------------------------------------------ edge lists
@dataclass(frozen=True)
class Edge:
    """One edge: ``kind`` (see :data:`EDGE_KINDS`), its layer (``-1`` for inputs, ``L`` for the final bias),
    ``head`` (``-1`` unless a head), source and destination positions, and its exact total contribution."""

    kind: str
    layer: int
    head: int
    src: int
    dst: int
    value: float

    def to_dict(self) -> dict:
        return {"kind": self.kind, "layer": self.layer, "head": self.head, "src": self.src, "dst": self.dst,
                "value": self.value}


def _flat(graph: AttributionGraph, include_skip: bool) -> tuple[Tensor, list[tuple[str, Tensor]]]:
    """All edge values as one vector, with (kind, index-tensor) blocks to decode positions from."""
    blocks: list[tuple[str, Tensor]] = [("head", graph.head)]
    blocks += [(k, getattr(graph, k)) for k in ("mlp", "attn_bias", "mlp_bias")]
    if include_skip:
        blocks.append(("attn_skip", graph.attn_skip))
        if graph.mlp_skip is not None:
            blocks.append(("mlp_skip", graph.mlp_skip))
    blocks.append(("embed", graph.embed))
    if graph.pos_embed is not None:
        blocks.append(("pos_embed", graph.pos_embed))
    if graph.final_bias:
        blocks.append(("final_bias", graph.head.new_tensor([graph.final_bias])))
    return torch.cat([b.reshape(-1) for _, b in blocks]), blocks


def edge_list(graph: AttributionGraph, top_k: int | None = None, threshold: float | None = None,
              include_skip: bool = False) -> list[Edge]:
    """The graph's edges by decreasing ``|value|``, pruned to the ``top_k`` largest and/or to those with
    ``|value| ≥ threshold · |graph.value|`` (relative threshold). Residual skips are bookkeeping, not
    computation, so they are left out unless ``include_skip``.
    """
    values, blocks = _flat(graph, include_skip)
    order = values.abs().argsort(descending=True)
    if threshold is not None:
        order = order[values[order].abs() >= threshold * abs(graph.value)]
    if top_k is not None:
        order = order[:top_k]
    offsets, start = [], 0
    for kind, b in blocks:
        offsets.append((start, kind, b.shape))
        start += b.numel()
    edges = []
    for i in order.tolist():
        off, kind, shape = next(o for o in reversed(offsets) if i >= o[0])
        idx = [int(j) for j in torch.unravel_index(torch.tensor(i - off), shape)]
        if kind == "head":
            edges.append(Edge("head", idx[0], idx[1], idx[3], idx[2], float(values[i])))
        elif kind in ("embed", "pos_embed"):
            edges.append(Edge(kind, -1, -1, idx[0], idx[0], float(values[i])))
        elif kind == "final_bias":
            edges.append(Edge(kind, graph.n_layers, -1, graph.target_pos, graph.target_pos, float(values[i])))
        else:
            edges.append(Edge(kind, idx[0], -1, idx[1], idx[1], float(values[i])))
    return edges


def graph_to_json(graph: AttributionGraph, top_k: int | None = 200, threshold: float | None = None) -> dict:
    """The graph as JSON-ready data (schema ``ivlens.tracing.graph/1``, documented in ``docs/tracing.md``)."""
    edges = edge_list(graph, top_k=top_k, threshold=threshold)
    nodes: dict[tuple, float] = {}
    for e in edges:  # component nodes: (layer, position, component)
        comp = f"head.{e.head}" if e.kind == "head" else e.kind
        key = (e.layer, e.dst, comp)
        nodes[key] = nodes.get(key, 0.0) + e.value
    return {
        "schema": "ivlens.tracing.graph/1",
        "tokens": list(graph.tokens),
        "target": {"coef": [[k, c] for k, c in graph.target.coef], "pos": graph.target_pos, **graph.target_info},
        "parallel_residual": graph.parallel,
        "value": graph.value,
        "real": graph.real,
        "completeness_rel_err": graph.completeness_rel_err,
        "n_layers": graph.n_layers,
        "n_heads": graph.n_heads,
        "sources": [int(i) for i in graph.sources.nonzero().flatten()],
        "with_bias": graph.with_bias,
        "pruning": {"top_k": top_k, "threshold": threshold},
        "layer_mass": graph.layer_mass().tolist(),
        "nodes": [{"layer": k[0], "pos": k[1], "component": k[2], "value": v} for k, v in nodes.items()],
        "edges": [e.to_dict() for e in edges],
    }
