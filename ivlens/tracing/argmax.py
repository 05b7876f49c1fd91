"""The paper's path tracer (``--method argmax``), kept for reproduction, with its approximation error.

The paper traces information flow by following, for every head and query position, only the key position
the head attends to most (its *argmax attention edge*), and by passing each path's vector through whole
layers. Here that is the frozen surrogate with every pattern ``A_h[t, ·]`` replaced by the single entry
``A_h[t, s*]`` at ``s* = argmax_s A_h[t, s]`` (the attention weight is kept as the edge's scale), MLP sublayers
traversed as the whole block ``I + MLP`` (never as separate path steps), and no bias terms. Paths over those
edges are found with the same exact backward beam search as the exact tracer (:func:`ivlens.tracing.paths.top_paths`
on the argmax surrogate), then each path's **logit vector** ``W_U · final_norm(path_vector)`` is computed
forwards and the path is kept when the answer's rank in it is below ``threshold_rank`` (rank 0 = top).

**Differences to the exact method** (``--method exact``, :mod:`ivlens.tracing.graph`):

1. Attention mass off the argmax (all other keys, often most of a diffuse head's mass) is dropped, so the paths
   do not sum to the logit; the exact tracer keeps every ``A_h[t, s]``.
2. Bias terms (``b_V``, ``b_O``, MLP and norm biases) are not paths here; the exact tracer reports them as
   sources.
3. MLPs are not path nodes (they act inside each path's whole-layer map); the exact tracer has an ``mlp`` edge
   per layer and position, so a path says whether it went through the MLP or around it.
4. Paths are kept by the rank of the answer in their own logit vector (a per-path logit-lens criterion), not by
   their contribution to the answer's logit; a path can rank the answer high and still contribute little.

The error is reported as the cosine and the norm ratio between the sum of the kept paths' logit vectors and
the model's real logits at the target position (and the same for all enumerated paths); the exact tracer's
completeness error is zero up to float error by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .paths import Path, path_vectors, top_paths
from .surrogate.frozen_map import Surrogate, Target, TracingError, logit_slopes


def argmax_patterns(sur: Surrogate) -> list[Tensor]:
    """Per layer ``[head, pos, pos]``: ``A_h[t, s*]`` at ``s* = argmax_s A_h[t, s]`` and 0 elsewhere."""
    out = []
    for att in sur.attn:
        A = att.pattern
        idx = A.argmax(-1, keepdim=True)  # [head, pos, 1]
        out.append(torch.zeros_like(A).scatter(-1, idx, A.gather(-1, idx)))
    return out


def argmax_surrogate(sur: Surrogate) -> Surrogate:
    """The surrogate restricted to each head's argmax attention edges."""
    return sur.with_patterns(argmax_patterns(sur))


@dataclass(frozen=True)
class ArgmaxTrace:
    """Result of the paper's tracer.

    ``paths``: the kept paths (answer rank ``< threshold_rank`` in their logit vector), with ``ranks``;
    ``n_enumerated``: how many paths the beam produced; ``cosine``/``norm_ratio``: the summed logit vectors of
    the kept paths against the real logits (``cosine_all``/``norm_ratio_all``: of all enumerated paths);
    ``answer_logit_kept``: the answer's logit summed over kept paths, ``answer_logit_real`` the model's.
    """

    paths: list[Path]
    ranks: list[int]
    n_enumerated: int
    threshold_rank: int
    cosine: float
    norm_ratio: float
    cosine_all: float
    norm_ratio_all: float
    answer_logit_kept: float
    answer_logit_real: float

    def to_dict(self, tokens: tuple[str, ...] = ()) -> dict:
        return {"method": "argmax", "threshold_rank": self.threshold_rank, "n_enumerated": self.n_enumerated,
                "n_kept": len(self.paths), "cosine": self.cosine, "norm_ratio": self.norm_ratio,
                "cosine_all": self.cosine_all, "norm_ratio_all": self.norm_ratio_all,
                "answer_logit_kept": self.answer_logit_kept, "answer_logit_real": self.answer_logit_real,
                "paths": [dict(p.to_dict(), rank=r, text=p.describe(tokens)) for p, r in
                          zip(self.paths, self.ranks, strict=True)]}


def _cos_ratio(a: Tensor, b: Tensor) -> tuple[float, float]:
    na, nb = float(a.norm()), float(b.norm())
    cos = float(a @ b) / (na * nb) if na > 0 and nb > 0 else 0.0
    return cos, na / nb if nb > 0 else float("inf")


def path_logits(sur: Surrogate, paths: list[Path], pos: int, chunk: int = 256):
    """Yield ``(paths_chunk, logits: [n, d_vocab])``: each path's logit vector ``W_U · final_norm_lin(v)``
    (under a final soft-cap times the frozen slope of every token, as the exact tracer defines its target, so
    the vectors of all paths and biases sum to the model's capped logits)."""
    t = sur.resolve_pos(pos)
    slope = logit_slopes(sur, list(range(sur.W_U.shape[0])), pos) if sur.final_softcap is not None else None
    for i in range(0, len(paths), chunk):
        part = paths[i : i + chunk]
        vecs = path_vectors(sur, part)  # [n, d_model]
        normed = sur.final_norm.apply(vecs, torch.full((len(part),), t))
        logits = normed @ sur.W_U.T
        yield part, logits if slope is None else logits * slope


def argmax_trace(sur: Surrogate, target: Target, threshold_rank: int = 10, max_paths: int = 1000,
                 beam: int = 1000, start_pos: int | None = None, end_pos: int | None = None) -> ArgmaxTrace:
    """Run the paper's tracer for ``target`` (its first token is the answer whose rank is checked)."""
    if target.is_readout:
        raise TracingError("--method argmax ranks an answer among the vocabulary's logits; a --readout has no "
                           "vocabulary: trace it with --method exact")
    asur = argmax_surrogate(sur)
    paths = top_paths(asur, target, k=max_paths, beam=beam, start_pos=start_pos, end_pos=end_pos,
                      with_bias=False, merge_mlp=True)
    answer = target.tokens[0]
    real = sur.logits[sur.resolve_pos(target.pos)].to(sur.W_U.dtype)
    kept, ranks = [], []
    sum_kept = torch.zeros_like(real)
    sum_all = torch.zeros_like(real)
    for part, logits in path_logits(asur, paths, target.pos):
        rank = (logits > logits[:, answer : answer + 1]).sum(-1)  # [n]
        ok = rank < threshold_rank
        sum_all += logits.sum(0)
        sum_kept += logits[ok].sum(0)
        kept += [p for p, k in zip(part, ok.tolist(), strict=True) if k]
        ranks += rank[ok].tolist()
    cos, ratio = _cos_ratio(sum_kept, real)
    cos_all, ratio_all = _cos_ratio(sum_all, real)
    return ArgmaxTrace(kept, ranks, len(paths), threshold_rank, cos, ratio, cos_all, ratio_all,
                       float(sum_kept[answer]), float(real[answer]))
