"""Instructions as circuit selectors: compare the exact graphs of one query under two instructions.

For a query of a contrastive task, trace the prompt with instruction A (target: A's answer) and with
instruction B (target: B's answer), and compare where their path mass flows:

- **aligned positions.** The prompts differ only in the instruction, so positions are keyed by the tokens the
  two prompts share: the common prefix by index (``pre i``), the common suffix by distance from the end
  (``post −j``, the query and answer position), and everything in between (the differing instruction tokens)
  pooled into one ``mid`` key (:func:`position_keys`);
- **edge weights.** Each graph's absolute edge contributions (heads ``s → t``, MLPs, bias terms, embeddings; not
  the residual skips) pooled over keyed positions and normalised to sum 1 (:func:`edge_weights`);
- **weighted Jaccard** ``Σ min(a, b) / Σ max(a, b)`` of the two weight vectors, **top-k overlap**
  ``|top_k(a) ∩ top_k(b)| / k``, **per-layer similarity** (weighted Jaccard within each layer's edges: where do
  the computations part?) and the weighted Jaccard of the top paths (:func:`compare_graphs`);
- **baseline**: the same comparison between each instruction and a rephrasing of it (A vs A′ and B vs B′, same
  subtask, same answer; averaged), and a paired Wilcoxon test over samples of A vs B against it;
- **quartets** (:class:`Quartet`): the per-layer weighted Jaccard of all six pairs of A, A′, B, B′ and what the
  model answers under A and B, from which :mod:`ivlens.tracing.selectivity` tests whether the gap is selectivity
  (a permutation null, bootstrap CIs, the difference against a base model, the correlation with behaviour);
- **head activity** (the paper's figure): for the paths leaving T_inst (sources restricted to that position,
  no biases), the share of each layer's attention-cut mass that goes through each head (:func:`head_activity`),
  per subtask and their difference.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .graph import AttributionGraph, compute_graph, forward_states, source_mask
from .paths import Path, top_paths
from .selectivity import AB, PAIRS, WITHIN, ModelQuartets
from .surrogate import Surrogate, Target, TracingError, backward, build_surrogate, scoped

log = logging.getLogger(__name__)


def position_keys(ids_a: list[int], ids_b: list[int]) -> tuple[list[int], list[int], int]:
    """Key index per position of each prompt: common prefix ``0 … P−1``, the differing middle ``P``, the
    common suffix ``P+1 …`` (aligned from the end). Returns ``(keys_a, keys_b, n_keys)``."""
    n = min(len(ids_a), len(ids_b))
    pre = 0
    while pre < n and ids_a[pre] == ids_b[pre]:
        pre += 1
    suf = 0
    while suf < n - pre and ids_a[-1 - suf] == ids_b[-1 - suf]:
        suf += 1

    def keys(ids: list[int]) -> list[int]:
        T = len(ids)
        return [t if t < pre else (pre + 1 + t - (T - suf) if t >= T - suf else pre) for t in range(T)]

    return keys(ids_a), keys(ids_b), pre + 1 + suf


@dataclass(frozen=True)
class EdgeWeights:
    """Normalised absolute edge mass on keyed positions: ``values: [n]`` (sums to 1), ``layer: [n]`` the layer of
    each entry (``-1`` embeddings)."""

    values: Tensor
    layer: Tensor


def edge_weights(graph: AttributionGraph, keys: list[int], n_keys: int) -> EdgeWeights:
    """Pool ``|edge contributions|`` onto keyed positions (see the module docstring) and normalise.

    Layout: ``head [L, H, K(dst), K(src)]``, then ``mlp, attn_bias, mlp_bias [L, K]``, then ``embed [K]`` (and
    ``pos_embed [K]``)."""
    L, H, K = graph.n_layers, graph.n_heads, n_keys
    k = torch.tensor(keys)
    dt = graph.head.dtype
    head = torch.zeros(L, H, K, K, dtype=dt)
    pair = (k[:, None] * K + k[None, :]).reshape(-1)  # [T*T] keyed (dst, src)
    head.view(L, H, K * K).index_add_(2, pair, graph.head.abs().reshape(L, H, -1))
    per_pos = [torch.zeros(L, K, dtype=dt).index_add_(1, k, getattr(graph, n).abs())
               for n in ("mlp", "attn_bias", "mlp_bias")]
    inputs = [torch.zeros(K, dtype=dt).index_add_(0, k, graph.embed.abs())]
    if graph.pos_embed is not None:
        inputs.append(torch.zeros(K, dtype=dt).index_add_(0, k, graph.pos_embed.abs()))
    values = torch.cat([head.reshape(-1)] + [p.reshape(-1) for p in per_pos] + inputs)
    layer = torch.cat([torch.arange(L).repeat_interleave(H * K * K)]
                      + [torch.arange(L).repeat_interleave(K)] * 3 + [torch.full((K,), -1)] * len(inputs))
    total = values.sum()
    return EdgeWeights(values / total if total > 0 else values, layer)


def weighted_jaccard(a: Tensor, b: Tensor) -> float:
    """``Σ min(a, b) / Σ max(a, b)`` for non-negative vectors (1 when both are zero)."""
    mx = torch.maximum(a, b).sum()
    return float(torch.minimum(a, b).sum() / mx) if mx > 0 else 1.0


def top_k_overlap(a: Tensor, b: Tensor, k: int) -> float:
    """Share of the ``k`` heaviest entries of ``a`` that are among the ``k`` heaviest of ``b``."""
    k = min(k, a.numel())
    ia, ib = set(a.topk(k).indices.tolist()), set(b.topk(k).indices.tolist())
    return len(ia & ib) / k


def _path_key(p: Path, keys: list[int]) -> tuple:
    return (p.source, p.layer, keys[p.pos], tuple((h.layer, h.kind, h.head, keys[h.src], keys[h.dst]) for h in p.hops))


def path_jaccard(pa: list[Path], keys_a: list[int], pb: list[Path], keys_b: list[int]) -> float:
    """Weighted Jaccard of two top-path sets keyed by route (layers, heads, keyed positions), by ``|value|``."""
    def weights(paths: list[Path], keys: list[int]) -> dict[tuple, float]:
        total = sum(abs(p.value) for p in paths) or 1.0
        out: dict[tuple, float] = {}
        for p in paths:
            key = _path_key(p, keys)
            out[key] = out.get(key, 0.0) + abs(p.value) / total
        return out

    wa, wb = weights(pa, keys_a), weights(pb, keys_b)
    union = list(dict.fromkeys([*wa, *wb]))  # a fixed order (a set's depends on the hash seed): same sums each run
    mx = sum(max(wa.get(u, 0.0), wb.get(u, 0.0)) for u in union)
    return sum(min(wa.get(u, 0.0), wb.get(u, 0.0)) for u in union) / mx if mx > 0 else 1.0


@dataclass(frozen=True)
class GraphComparison:
    """``weighted_jaccard``, ``top_k_overlap`` (of edges), ``per_layer: [layer]`` similarity, ``path_jaccard``."""

    weighted_jaccard: float
    top_k_overlap: float
    per_layer: list[float]
    path_jaccard: float | None = None

    def to_dict(self) -> dict:
        return {"weighted_jaccard": self.weighted_jaccard, "top_k_overlap": self.top_k_overlap,
                "per_layer": self.per_layer, "path_jaccard": self.path_jaccard}

    @classmethod
    def mean(cls, comps: Sequence[GraphComparison]) -> GraphComparison:
        """The comparison whose every measure is the mean of ``comps``' (path Jaccard: ``None`` unless all have
        one)."""
        pj = [c.path_jaccard for c in comps]
        return cls(float(np.mean([c.weighted_jaccard for c in comps])),
                   float(np.mean([c.top_k_overlap for c in comps])),
                   np.mean([c.per_layer for c in comps], axis=0).tolist(),
                   float(np.mean(pj)) if all(x is not None for x in pj) else None)


def compare_graphs(ga: AttributionGraph, ids_a: list[int], gb: AttributionGraph, ids_b: list[int], top_k: int = 50,
                   paths_a: list[Path] | None = None, paths_b: list[Path] | None = None) -> GraphComparison:
    """Compare two graphs of prompts that differ in their instruction (see the module docstring)."""
    ka, kb, K = position_keys(ids_a, ids_b)
    wa, wb = edge_weights(ga, ka, K), edge_weights(gb, kb, K)
    per_layer = [weighted_jaccard(wa.values[wa.layer == l], wb.values[wb.layer == l]) for l in range(ga.n_layers)]  # noqa: E741
    pj = path_jaccard(paths_a, ka, paths_b, kb) if paths_a is not None and paths_b is not None else None
    return GraphComparison(weighted_jaccard(wa.values, wb.values), top_k_overlap(wa.values, wb.values, top_k),
                           per_layer, pj)


def head_activity(graph: AttributionGraph) -> Tensor:
    """``[layer, head]``: share of each layer's attention-cut mass through each head, ``Σ_{t,s}|E[l,h,t,s]|`` over
    ``Σ_{h,t,s}|E[l,h,t,s]| + Σ_t |skip[l,t]| + Σ_t |bias[l,t]|`` (parallel residual: the cut is the whole layer,
    so its MLP and MLP bias count too). Use a graph restricted to the sources of interest (e.g. T_inst) to get
    the paper's head activity for paths leaving them."""
    heads = graph.head.abs().sum((2, 3))  # [layer, head]
    total = heads.sum(1) + graph.attn_skip.abs().sum(1) + graph.attn_bias.abs().sum(1)
    if graph.parallel:
        total = total + graph.mlp.abs().sum(1) + graph.mlp_bias.abs().sum(1)
    return heads / total.clamp_min(1e-30)[:, None]


@dataclass(frozen=True)
class Quartet:
    """One sample's four graphs (A, A′, B, B′: each instruction and a rephrasing of it) compared pairwise, and
    what the model does under A and B (:mod:`ivlens.tracing.selectivity` reads these).

    ``whole: [6]`` and ``per_layer: [6][layer]``: weighted Jaccard of each pair of
    :data:`~ivlens.tracing.selectivity.PAIRS`, over the whole graph and within each layer; ``answer_a``,
    ``answer_b``: the model's greedy next token under A and B; ``tv``: the total variation distance between its
    next-token distributions under A and B."""

    sample: int
    whole: list[float]
    per_layer: list[list[float]]
    answer_a: int
    answer_b: int
    tv: float

    def to_dict(self) -> dict:
        return {"sample": self.sample, "whole": self.whole, "per_layer": self.per_layer, "answer_a": self.answer_a,
                "answer_b": self.answer_b, "tv": self.tv}

    @staticmethod
    def stack(quartets: Sequence[Quartet]) -> ModelQuartets:
        """The arrays of :class:`~ivlens.tracing.selectivity.ModelQuartets` of one model's quartets."""
        L = len(quartets[0].per_layer[0]) if quartets else 0
        return ModelQuartets(np.array([q.sample for q in quartets], dtype=np.int64),
                             np.array([q.per_layer for q in quartets], dtype=np.float64).reshape(-1, len(PAIRS), L),
                             np.array([q.tv for q in quartets], dtype=np.float64),
                             np.array([q.answer_a != q.answer_b for q in quartets], dtype=bool))


def next_token_behaviour(logits_a: Tensor, logits_b: Tensor) -> tuple[int, int, float]:
    """``(top-1 under A, top-1 under B, total variation distance ½ Σ|p_A − p_B|)`` of two next-token logit
    vectors ``[d_vocab]``."""
    pa, pb = logits_a.double().softmax(-1), logits_b.double().softmax(-1)
    return int(logits_a.argmax()), int(logits_b.argmax()), float(0.5 * (pa - pb).abs().sum())


# ------------------------------------------------------------------------------- over samples of a task
@dataclass
class PromptTrace:
    """One traced prompt: its ids, T_inst, target, surrogate, full graph, top paths, T_inst-restricted graph."""

    ids: list[int]
    t_inst: int | None
    target: Target
    sur: Surrogate
    graph: AttributionGraph
    paths: list[Path]
    inst_graph: AttributionGraph | None


def trace_for_compare(model, tokenizer, ids: list[int], target: Target, t_inst: int | None, paths_k: int = 100,
                      beam: int = 128) -> PromptTrace:
    """Everything :func:`compare_subtasks` needs of one prompt. The full graph and the path search share one
    forward pass of the frozen map (every source, biases on), and both graphs one backward pass."""
    sur = build_surrogate(model, ids, tokenizer=tokenizer)
    scope = scoped(sur, target)
    states = forward_states(scope, source_mask(len(ids)), with_bias=True)
    grads = backward(scope, target)
    graph = compute_graph(sur, target, states=states, grads=grads)
    paths = top_paths(sur, target, k=paths_k, beam=beam, states=states)
    inst = (compute_graph(sur, target, source_mask(len(ids), t_inst, t_inst), grads=grads) if t_inst is not None
            else None)
    return PromptTrace(list(ids), t_inst, target, sur, graph, paths, inst)


@dataclass
class SubtaskComparison:
    """Per-sample comparisons (``rows``), their aggregates, and mean head activity per subtask.

    ``ab`` / ``baseline``: lists of :class:`GraphComparison` (A vs B; the mean of A vs A′ and B vs B′, each
    instruction against a rephrasing of it); ``quartets``: one :class:`Quartet` per sample (all six pairs, the
    model's answers); ``head_activity``: subtask → ``[layer, head]`` mean share over samples (``head_samples``: the
    per-sample ``[layer, head]`` shares it averages); ``completeness``: max relative error seen;
    ``example``: the top paths of the first sample under A and B, one dict per path (see :func:`example_rows`).
    """

    subtasks: tuple[str, str]
    ab: list[GraphComparison] = field(default_factory=list)
    baseline: list[GraphComparison] = field(default_factory=list)
    head_activity: dict[str, Tensor] = field(default_factory=dict)
    completeness: float = 0.0
    rows: list[dict] = field(default_factory=list)
    example: list[dict] = field(default_factory=list)
    head_samples: dict[str, list[Tensor]] = field(default_factory=dict)
    quartets: list[Quartet] = field(default_factory=list)

    @classmethod
    def merge(cls, parts: list[SubtaskComparison]) -> SubtaskComparison:
        """One comparison from comparisons of consecutive groups of samples (in sample order): equal to the
        comparison of all the samples at once (lists concatenated, head activity averaged per sample)."""
        out = cls(parts[0].subtasks)
        for p in parts:
            out.ab += p.ab
            out.baseline += p.baseline
            out.quartets += p.quartets
            out.rows += p.rows
            out.example = out.example or p.example
            out.completeness = max(out.completeness, p.completeness)
            for sub, acts in p.head_samples.items():
                out.head_samples.setdefault(sub, []).extend(acts)
        out.head_activity = {s: torch.stack(v).mean(0) for s, v in out.head_samples.items() if v}
        return out

    def to_part(self) -> tuple[dict, dict[str, Tensor]]:
        """This comparison as JSON data and named tensors, for :meth:`ivlens.runs.RunDir.write_part`."""
        data = {"subtasks": list(self.subtasks), "ab": [c.to_dict() for c in self.ab],
                "baseline": [c.to_dict() for c in self.baseline], "quartets": [q.to_dict() for q in self.quartets],
                "completeness": float(self.completeness),
                "rows": self.rows, "example": self.example,
                "head_samples": {s: len(v) for s, v in self.head_samples.items()},
                "head_activity": list(self.head_activity)}
        tensors = {f"head_samples.{s}.{i}": t for s, v in self.head_samples.items() for i, t in enumerate(v)}
        tensors |= {f"head_activity.{s}": t for s, t in self.head_activity.items()}
        return data, tensors

    @classmethod
    def from_part(cls, data: dict, tensors: dict[str, Tensor]) -> SubtaskComparison:
        """The comparison :meth:`to_part` wrote."""
        if "quartets" not in data:
            raise TracingError("this compare part was written by an older ivlens (it traced two rephrasings of A, "
                               "not one of A and one of B, and has no quartets for the selectivity statistics): "
                               "start a new run instead of --resume or ivlens merge")
        return cls(tuple(data["subtasks"]), ab=[GraphComparison(**d) for d in data["ab"]],
                   baseline=[GraphComparison(**d) for d in data["baseline"]],
                   quartets=[Quartet(**d) for d in data["quartets"]],
                   head_activity={s: tensors[f"head_activity.{s}"] for s in data["head_activity"]},
                   completeness=data["completeness"], rows=data["rows"], example=data["example"],
                   head_samples={s: [tensors[f"head_samples.{s}.{i}"] for i in range(n)]
                                 for s, n in data["head_samples"].items()})

    def curve(self, which: str = "ab") -> np.ndarray:
        """Mean per-layer similarity ``[layer]`` over samples."""
        comps = self.ab if which == "ab" else self.baseline
        return np.mean([c.per_layer for c in comps], axis=0) if comps else np.array([])

    def part_layer(self) -> int | None:
        """First layer where A-vs-B similarity falls below the baseline by more than half the largest gap
        (a descriptive marker of where the two computations part; ``None`` without a baseline)."""
        if not self.baseline or not self.ab:
            return None
        gap = self.curve("baseline") - self.curve("ab")
        if gap.max() <= 0:
            return None
        return int(np.argmax(gap >= 0.5 * gap.max()))

    def summary(self) -> dict:
        def agg(comps: list[GraphComparison], name: str) -> dict:
            vals = [getattr(c, name) for c in comps if getattr(c, name) is not None]
            return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "n": len(vals)} if vals else {}

        out = {"subtasks": list(self.subtasks), "completeness_max_rel_err": self.completeness,
               "part_layer": self.part_layer(), "per_layer_ab": self.curve("ab").tolist(),
               "per_layer_baseline": self.curve("baseline").tolist()}
        for name in ("weighted_jaccard", "top_k_overlap", "path_jaccard"):
            out[name] = {"ab": agg(self.ab, name), "baseline": agg(self.baseline, name)}
        n = min(len(self.ab), len(self.baseline))
        if n >= 5:
            from scipy.stats import wilcoxon

            a = [c.weighted_jaccard for c in self.ab[:n]]
            b = [c.weighted_jaccard for c in self.baseline[:n]]
            if any(x != y for x, y in zip(a, b, strict=True)):
                out["wilcoxon_ab_vs_baseline"] = {"statistic": float(wilcoxon(a, b).statistic),
                                                  "pvalue": float(wilcoxon(a, b, alternative="less").pvalue)}
        return out


def example_rows(sample, traces: dict[str, PromptTrace], k: int = 20) -> list[dict]:
    """The top ``k`` exact paths of one sample under each subtask's instruction, one row per path: subtask,
    sample, query, rank, value, source, layer, pos, hops (JSON), tokens (JSON), t_inst, n_layers — what a
    report needs to draw them over the token × layer grid without the model."""
    rows = []
    for sub, tr in traces.items():
        tokens = json.dumps(list(tr.sur.tokens) or [str(i) for i in tr.ids])
        for rank, p in enumerate(tr.paths[:k]):
            rows.append({"subtask": sub, "sample": sample.index, "query": sample.query, "rank": rank,
                         "value": float(p.value), "source": p.source, "layer": p.layer, "pos": p.pos,
                         "hops": json.dumps([h.to_dict() for h in p.hops]), "tokens": tokens,
                         "t_inst": tr.t_inst, "n_layers": tr.sur.n_layers, "target_value": float(tr.graph.value)})
    return rows


def compare_subtasks(model, tokenizer, task, samples, fmt: str = "raw", top_k: int = 50, paths_k: int = 100,
                     beam: int = 128, progress: Callable[[], None] | None = None,
                     example_k: int = 20) -> SubtaskComparison:
    """Trace every sample of a contrastive ``task`` under instruction A and B (each with its own answer as
    target) and under the first rephrasing of each (A′, B′: the baseline and the selectivity quartet); compare;
    accumulate head activity per subtask.

    ``samples``: :class:`ivlens.tasks.Sample` s; ``fmt``: prompt format (``raw`` | ``chat``).
    """
    from ivlens.tasks import instructed_prompt, label_token_ids

    if not task.is_contrastive:
        raise ValueError(f"task {task.name!r} is not contrastive: --compare needs two subtasks")
    sa, sb = task.subtask_names
    res = SubtaskComparison((sa, sb))
    acts: dict[str, list[Tensor]] = {sa: [], sb: []}

    def run(sub: str, instruction: str, sample) -> PromptTrace:
        prompt = instructed_prompt(tokenizer, task, sample, instruction, fmt)
        answer = label_token_ids(tokenizer, prompt, sample.answer(sub))[0]
        tr = trace_for_compare(model, tokenizer, list(prompt.input_ids), Target.logit(answer), prompt.t_inst,
                               paths_k, beam)
        res.completeness = max(res.completeness, tr.graph.completeness_rel_err)
        return tr

    reph = {sub: task.subtasks[sub].rephrasings for sub in (sa, sb)}
    for sample in samples:
        ta, tb = run(sa, task.subtasks[sa].instruction, sample), run(sb, task.subtasks[sb].instruction, sample)
        ab = compare_graphs(ta.graph, ta.ids, tb.graph, tb.ids, top_k, ta.paths, tb.paths)
        res.ab.append(ab)
        for sub, tr in ((sa, ta), (sb, tb)):
            if tr.inst_graph is not None:
                acts[sub].append(head_activity(tr.inst_graph))
        row = {"sample": sample.index, "query": sample.query, **{f"ab_{k}": v for k, v in ab.to_dict().items()}}
        if reph[sa] and reph[sb]:
            four = (ta, run(sa, reph[sa][0], sample), tb, run(sb, reph[sb][0], sample))  # A, A′, B, B′
            pairs = [ab if (i, j) == PAIRS[AB] else
                     compare_graphs(four[i].graph, four[i].ids, four[j].graph, four[j].ids, top_k, four[i].paths,
                                    four[j].paths) for i, j in PAIRS]
            base = GraphComparison.mean([pairs[k] for k in WITHIN])
            res.baseline.append(base)
            quartet = Quartet(sample.index, [c.weighted_jaccard for c in pairs], [c.per_layer for c in pairs],
                              *next_token_behaviour(ta.sur.logits[-1], tb.sur.logits[-1]))
            res.quartets.append(quartet)
            row.update({f"baseline_{k}": v for k, v in base.to_dict().items()})
            row.update({"pairs_per_layer": quartet.per_layer, "answer_a": quartet.answer_a,
                        "answer_b": quartet.answer_b, "answer_changes": quartet.answer_a != quartet.answer_b,
                        "behaviour_tv": quartet.tv})
        res.rows.append(row)
        if not res.example:
            res.example = example_rows(sample, {sa: ta, sb: tb}, example_k)
        if progress:
            progress()
    if not (reph[sa] and reph[sb]):
        log.warning("a subtask of %s has no rephrasing: no rephrasing baseline and no selectivity", task.name)
    res.head_samples = {s: v for s, v in acts.items() if v}
    res.head_activity = {s: torch.stack(v).mean(0) for s, v in res.head_samples.items()}
    return res
