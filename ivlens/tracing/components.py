"""Which components, from which tokens, write a traced value: an attribution graph summed per component.

For a read-out at ``(l, t)`` (an instruction vector's direction at T_inst) this answers *what builds the IV*:
every head's total contribution ``Σ_{t'} E[layer, head, t', s]`` per source position ``s`` (the token it reads
from), every MLP's per position, the biases per layer, and the embeddings per token. Each value is exact (a sum
of edge totals, :mod:`ivlens.tracing.graph`); the heads, MLP, biases and skip of any one sublayer sum to ``y``.
"""

from __future__ import annotations

from .graph import AttributionGraph

COLUMNS = ("layer", "component", "head", "src", "token", "value")


def component_rows(graph: AttributionGraph) -> list[dict]:
    """One row per (layer, component, head, source position): ``{layer, component, head, src, token, value}``.

    ``component``: ``head`` (``head`` its index, ``src`` the key position it reads), ``mlp`` (at ``src``),
    ``attn_bias`` / ``mlp_bias`` (summed over positions, ``src = -1``), ``embed`` / ``pos_embed`` (``layer = -1``).
    """
    tok = list(graph.tokens)

    def token(i: int) -> str:
        return tok[i] if 0 <= i < len(tok) else ""

    rows = []
    by_src = graph.head.sum(2)  # [layer, head, pos(s)]: summed over the destination t'
    for l in range(graph.n_layers):  # noqa: E741
        for h in range(graph.n_heads):
            rows += [{"layer": l, "component": "head", "head": h, "src": s, "token": token(s),
                      "value": float(by_src[l, h, s])} for s in range(graph.n_pos) if by_src[l, h, s] != 0]
        rows += [{"layer": l, "component": "mlp", "head": -1, "src": s, "token": token(s),
                  "value": float(graph.mlp[l, s])} for s in range(graph.n_pos) if graph.mlp[l, s] != 0]
        for kind in ("attn_bias", "mlp_bias"):
            v = float(getattr(graph, kind)[l].sum())
            if v != 0:
                rows.append({"layer": l, "component": kind, "head": -1, "src": -1, "token": "", "value": v})
    for kind in ("embed", "pos_embed"):
        vals = getattr(graph, kind)
        if vals is not None:
            rows += [{"layer": -1, "component": kind, "head": -1, "src": s, "token": token(s), "value": float(vals[s])}
                     for s in range(graph.n_pos) if vals[s] != 0]
    return rows
