"""Top-K paths with exact contributions, by beam search backwards from the output.

A path runs from a source (the token embedding at position ``s``, a learned position embedding, or a bias term)
through one edge per sublayer (a residual skip, ``head h`` of layer ``l`` from position ``i`` to ``j``, or the
``mlp`` of layer ``l`` at ``j``) to the target. Skips are not listed in :attr:`Path.hops`; a path with no hops is
the direct embedding → unembedding path.

**Search.** A partial path from state ``x_k[t]`` to the output is a row vector ``ρ`` (``ρ_out`` pushed back through
the chosen edges' transposes). Its exact total over *all* beginnings is ``ρ · f_k[t]``, with ``f`` the forward
states of the frozen map from the selected sources. Going back one sublayer at a time, every partial path is
extended by each incoming edge, scored by that exact total, and the ``beam`` best by ``|score|`` are kept; bias
edges and (at ``k = 0``) the embeddings end a path with its exact value ``ρ · source``. The work is
``O(L · beam · H · T · d_head)`` and never enumerates the exponentially many paths. With an unbounded beam the
returned paths are *all* paths and sum to ``y`` exactly (a test); with a finite beam the search is a heuristic
for the largest paths, but every reported value is exact.

**Parallel residual** (GPT-NeoX): a layer's attention and MLP read the same state, so a path crosses layer ``l``
in one step, by exactly one of: the skip, the ``mlp`` at ``j``, or one head ``i → j`` (never the MLP *and* a head
of the same layer: those are two different paths). With ``merge_mlp`` the non-head edge is ``I + MLP``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .graph import forward_states, source_mask
from .surrogate.frozen_map import (
    Surrogate,
    Target,
    mlp_linear,
    mlp_linear_T,
    norm_linear,
    norm_linear_T,
    readout_vector,
    scoped,
)


@dataclass(frozen=True)
class Hop:
    """One non-skip edge of a path: ``head`` ``h`` of ``layer`` from ``src`` to ``dst``, or the ``mlp`` at ``dst``."""

    layer: int
    kind: str
    head: int
    src: int
    dst: int

    def label(self) -> str:
        return f"L{self.layer}H{self.head}" if self.kind == "head" else f"L{self.layer}MLP"

    def to_dict(self) -> dict:
        return {"layer": self.layer, "kind": self.kind, "head": self.head, "src": self.src, "dst": self.dst}


@dataclass(frozen=True)
class Path:
    """A source → … → target path and its exact contribution ``value``.

    ``source``: ``embed``, ``pos_embed``, ``attn_bias``, ``mlp_bias`` or ``final_bias``; ``layer``: the bias's
    layer (``-1`` for embeddings); ``pos``: where the source enters; ``hops`` in forward order; ``merged_mlp``:
    the path went through every MLP sublayer as the whole block ``I + MLP`` (the argmax tracer's convention).
    """

    source: str
    layer: int
    pos: int
    hops: tuple[Hop, ...]
    value: float
    merged_mlp: bool = False

    def describe(self, tokens: tuple[str, ...] | list[str] = ()) -> str:
        def tok(i: int) -> str:
            return f"{tokens[i]!r}@{i}" if tokens else f"@{i}"

        start = tok(self.pos) if self.source in ("embed", "pos_embed") else f"{self.source}[L{self.layer}]{tok(self.pos)}"
        parts = [start] + [f"{h.label()}→{tok(h.dst)}" if h.kind == "head" else h.label() for h in self.hops]
        return " → ".join(parts) + f"  ({self.value:+.4g})"

    def to_dict(self) -> dict:
        return {"source": self.source, "layer": self.layer, "pos": self.pos, "value": self.value,
                "hops": [h.to_dict() for h in self.hops], "merged_mlp": self.merged_mlp}


def top_paths(sur: Surrogate, target: Target, k: int = 20, beam: int = 256, start_pos: int | None = None,
              end_pos: int | None = None, with_bias: bool | None = None, merge_mlp: bool = False, *,
              states: list[Tensor] | None = None) -> list[Path]:
    """The ``k`` largest (by ``|value|``) paths found by a beam search of width ``beam``.

    ``start_pos``/``end_pos`` restrict the *sources* to the token positions ``start_pos … end_pos`` (inclusive,
    negative counts from the end), e.g. the instruction's last token T_inst; biases are then left out unless
    ``with_bias=True``. ``merge_mlp`` treats each MLP sublayer as the single edge ``I + MLP``. A read-out target
    at layer ``l`` searches the surrogate cut after block ``l``. ``states``: the forward states of these sources
    (:func:`~ivlens.tracing.graph.forward_states` of the scoped surrogate) when the caller has them already.
    """
    sur = scoped(sur, target)
    T = sur.n_pos
    restricted = start_pos is not None or end_pos is not None
    sources = source_mask(T, start_pos, end_pos)
    with_bias = (not restricted) if with_bias is None else with_bias
    f = forward_states(sur, sources, with_bias=with_bias) if states is None else states
    rho_out, const = readout_vector(sur, target)
    t_out = sur.resolve_pos(target.pos)

    done: list[tuple[float, str, int, int, tuple]] = []  # (value, source, layer, pos, hops)
    if with_bias and const:
        done.append((const, "final_bias", sur.n_layers, t_out, ()))
    rho = rho_out[None]  # [beam, d_model]
    pos = torch.tensor([t_out])  # [beam]
    hops: list[tuple] = [()]

    def ended(kind: str, layer: int, vals: Tensor) -> None:
        """Paths that end at a bias source (``vals: [beam]``, their exact values; zeros are no paths)."""
        done.extend((v, kind, layer, p, h) for v, p, h in zip(vals.tolist(), pos.tolist(), hops, strict=True)
                    if v != 0)

    def keep(scores: Tensor, n: int) -> Tensor:
        return scores.abs().flatten().topk(min(n, scores.numel())).indices

    def head_step(l: int, local: list[Tensor], local_hop: list[str | None], bias_rows: list[Tensor]):  # noqa: E741
        """Extend every partial path (``rho`` at ``pos``) across attention sublayer ``l`` (parallel: across layer
        ``l``) by the edges that stay at ``pos`` (``local``: ``[beam, d_model]`` each, hop kind or ``None`` for the
        skip) or by one head; keep the ``beam`` best. Bias rows (``[pos, d_model]``) end paths."""
        nonlocal rho, pos, hops, done
        att = sur.attn[l]
        if with_bias:
            for kind, b in zip(("attn_bias", "mlp_bias"), bias_rows, strict=False):
                ended(kind, l, (rho * b[pos]).sum(-1))
        x_prev = f[sur.state_in(l, "attn")]
        H, dh, n_loc = att.n_heads, att.d_head, len(local)
        v = att.values(norm_linear(att.norm_in)(x_prev)).view(T, H, dh).transpose(0, 1)  # [head, pos, d_head]
        beta = (norm_linear_T(att.norm_out)(rho, pos) @ att.W_O_flat).view(len(pos), H, dh)  # [beam, head, d_head]
        A = att.pattern[:, pos].transpose(0, 1)  # [beam, head, pos(s)]
        head_scores = A * torch.einsum("bhk,hsk->bhs", beta, v)  # [beam, head, pos(s)]
        cand = torch.stack(local, 1)  # [beam, n_loc, d_model]
        loc_scores = (cand * x_prev[pos][:, None]).sum(-1)  # [beam, n_loc]
        scores = torch.cat([loc_scores, head_scores.reshape(len(pos), H * T)], 1)  # [beam, n_loc + H*T]
        live = torch.cat([torch.ones_like(loc_scores, dtype=torch.bool), (A > 0).reshape(len(pos), H * T)], 1)
        flat = torch.where(live, scores.abs(), torch.full_like(scores, -1.0))
        width = n_loc + H * T
        sel = flat.flatten().topk(min(beam, int(live.sum()))).indices
        b, c = sel // width, sel % width
        is_head = c >= n_loc
        h_idx, s_idx = (c - n_loc).clamp(min=0) // T, (c - n_loc).clamp(min=0) % T
        new_rho = cand[b, c.clamp(max=n_loc - 1)].clone()
        if bool(is_head.any()):
            bh, hh, sh = b[is_head], h_idx[is_head], s_idx[is_head]
            onehot = torch.zeros(len(hh), H, dh, dtype=beta.dtype)
            onehot[torch.arange(len(hh)), hh] = beta[bh, hh]
            u = att.values_T(onehot.view(len(hh), H * dh), sh)  # W_V^hᵀ M_s β: [n, d_model]
            new_rho[is_head] = A[bh, hh, sh][:, None] * norm_linear_T(att.norm_in)(u, sh)
        new_pos = torch.where(is_head, s_idx, pos[b])
        new_hops = []
        pos_list = pos.tolist()
        for bi, ci, hi, si in zip(b.tolist(), c.tolist(), h_idx.tolist(), s_idx.tolist(), strict=True):
            p = pos_list[bi]
            if ci >= n_loc:
                new_hops.append(((l, "head", hi, si, p),) + hops[bi])
            elif local_hop[ci] is not None:
                new_hops.append(((l, local_hop[ci], -1, p, p),) + hops[bi])
            else:
                new_hops.append(hops[bi])
        rho, pos, hops = new_rho, new_pos, new_hops

    for l in reversed(range(sur.n_layers)):  # noqa: E741
        att, mlp = sur.attn[l], sur.mlp[l]
        if sur.parallel:  # ---------------- the whole layer: state l+1 -> l
            back = mlp_linear_T(mlp, rho, pos)  # [beam, d_model]
            local, local_hop = ([rho + back], [None]) if merge_mlp else ([rho, back], [None, "mlp"])
            head_step(l, local, local_hop, [att.bias, mlp.bias])
            continue
        # ---------------- MLP sublayer: state 2l+2 -> 2l+1
        if with_bias:
            ended("mlp_bias", l, (rho * mlp.bias[pos]).sum(-1))
        back = mlp_linear_T(mlp, rho, pos)  # [beam, d_model]
        if merge_mlp:
            rho = rho + back
        else:
            m_prev = f[2 * l + 1][pos]
            cand = torch.stack([rho, back], 1)  # [beam, 2, d_model]: skip, mlp
            scores = (cand * m_prev[:, None]).sum(-1)  # [beam, 2]
            sel = keep(scores, beam)
            b, c = sel // 2, sel % 2
            rho, pos = cand[b, c], pos[b]
            hops = [hops[bi] if ci == 0 else ((l, "mlp", -1, p, p),) + hops[bi]
                    for bi, ci, p in zip(b.tolist(), c.tolist(), pos.tolist(), strict=True)]
        # ---------------- attention sublayer: state 2l+1 -> 2l
        head_step(l, [rho], [None], [att.bias])
    # ---------------- sources: the embeddings at x_0
    keep_src = sources[pos].tolist()
    vals = (rho * sur.embed[pos]).sum(-1).tolist()
    pos_list = pos.tolist()
    done += [(v, "embed", -1, p, h) for v, p, h, ok in zip(vals, pos_list, hops, keep_src, strict=True) if ok]
    if sur.pos_embed is not None:
        vals = (rho * sur.pos_embed[pos]).sum(-1).tolist()
        done += [(v, "pos_embed", -1, p, h) for v, p, h, ok in zip(vals, pos_list, hops, keep_src, strict=True) if ok]
    done.sort(key=lambda d: -abs(d[0]))
    return [Path(src, layer, p, tuple(Hop(*h) for h in hs), val, merge_mlp) for val, src, layer, p, hs in done[:k]]


# --------------------------------------------------------------------------- forward evaluation of paths
def _start(sur: Surrogate, path: Path) -> tuple[Tensor, int]:
    """The source vector ``[d_model]`` of ``path`` and the first step (sublayer; parallel: layer) it crosses."""
    if path.source in ("embed", "pos_embed"):
        return (sur.embed if path.source == "embed" else sur.pos_embed)[path.pos], 0
    if path.source in ("attn_bias", "mlp_bias"):
        att = path.source == "attn_bias"
        vec = (sur.attn if att else sur.mlp)[path.layer].bias[path.pos]
        return vec, sur.state_in(path.layer, "attn" if att else "mlp") + 1
    return torch.zeros_like(sur.embed[0]), sur.n_states - 1  # final bias: enters after the last layer


def path_vectors(sur: Surrogate, paths: list[Path]) -> Tensor:
    """``[n_paths, d_model]``: the vector each path delivers to the residual stream at its last position,
    computed *forwards* through the path's edges, all paths batched per sublayer (an independent check of the
    backward search, and the argmax tracer's per-path logit vector ``W_U · final_norm(vector)``)."""
    n = len(paths)
    starts = [_start(sur, p) for p in paths]
    vec = torch.zeros(n, sur.embed.shape[1], dtype=sur.embed.dtype)
    first = torch.tensor([f for _, f in starts])
    start_vec = torch.stack([v for v, _ in starts])  # [n, d_model]
    pos = torch.tensor([p.pos for p in paths])
    heads: dict[int, list[tuple[int, Hop]]] = {}
    for i, p in enumerate(paths):
        for h in p.hops:
            if h.kind == "head":
                heads.setdefault(h.layer, []).append((i, h))
    mlps = {(i, h.layer) for i, p in enumerate(paths) for h in p.hops if h.kind == "mlp"}
    merged = torch.tensor([p.merged_mlp for p in paths])

    def head_edges(l: int) -> Tensor:  # noqa: E741
        """Move the paths with a head hop in layer ``l``; returns their rows."""
        att = sur.attn[l]
        r = torch.tensor([i for i, _ in heads[l]])
        hs = [h for _, h in heads[l]]
        h_idx, src, dst = (torch.tensor([getattr(h, a) for h in hs]) for a in ("head", "src", "dst"))
        m, H, dh = len(r), att.n_heads, att.d_head
        v_all = att.values(norm_linear(att.norm_in)(vec[r], src), src).view(m, H, dh)  # every head's value of each path
        z = torch.zeros_like(v_all)
        z[torch.arange(m), h_idx] = att.pattern[h_idx, dst, src][:, None] * v_all[torch.arange(m), h_idx]
        vec[r] = norm_linear(att.norm_out)(z.view(m, H * dh) @ att.W_O_flat.T, dst)
        pos[r] = dst
        return r

    def mlp_edges(l: int, k: int, exclude: Tensor | None = None) -> None:  # noqa: E741
        """Move the paths through layer ``l``'s MLP (their own hop, or merged ``I + MLP``) at step ``k``."""
        own = torch.zeros(n, dtype=torch.bool)
        own[[i for i, ll in mlps if ll == l]] = True
        active = (own | merged) & (first <= k)
        if exclude is not None:
            active[exclude] = False
        if not bool(active.any()):
            return
        r = active.nonzero().flatten()
        out = mlp_linear(sur.mlp[l], vec[r], pos[r])
        vec[r] = torch.where(merged[r][:, None], vec[r] + out, out)

    for k in range(sur.n_states - 1):
        vec = torch.where((first == k)[:, None], start_vec, vec)
        if sur.parallel:  # layer k: one head, or the MLP (merged: I + MLP), or the skip
            moved = head_edges(k) if k in heads else None
            mlp_edges(k, k, exclude=moved)
            continue
        l = k // 2  # noqa: E741
        if k % 2 == 0:
            if l in heads:
                head_edges(l)
        else:
            mlp_edges(l, k)
    # sources entering after the last step: the last MLP's bias, the final bias
    return torch.where((first == sur.n_states - 1)[:, None], start_vec, vec)


def path_vector(sur: Surrogate, path: Path) -> Tensor:
    """``[d_model]``: :func:`path_vectors` for a single path."""
    return path_vectors(sur, [path])[0]


def path_value(sur: Surrogate, target: Target, path: Path) -> float:
    """``ρ_out · path_vector`` (+ the constant for the final-bias path): the path's exact contribution."""
    sur = scoped(sur, target)
    rho, const = readout_vector(sur, target)
    return const if path.source == "final_bias" else float(rho @ path_vector(sur, path))
