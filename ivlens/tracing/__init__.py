"""Exact path tracing: the frozen linear surrogate, attribution graphs, top paths, the paper's argmax tracer,
and instructions compared as circuit selectors. The maths is in ``docs/tracing.md``.

>>> from ivlens.tracing import trace_prompt
>>> res = trace_prompt(model, tokenizer, "The capital of France is", target=" Paris")
>>> res.graph.completeness_rel_err            # < 1e-4: the contributions sum to the real logit
>>> print(res.paths[0].describe(res.sur.tokens))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path as FilePath

from ivlens.runs import atomic_write_json

from .argmax import ArgmaxTrace, argmax_trace
from .compare import SubtaskComparison, compare_graphs, compare_subtasks, head_activity
from .graph import AttributionGraph, compute_graph, cut_totals, edge_list, graph_to_json, source_mask
from .paths import Path, top_paths
from .spec import TraceSpec
from .surrogate import Surrogate, Target, TracingError, build_surrogate

__all__ = ["TraceSpec",
    "ArgmaxTrace", "AttributionGraph", "Path", "SubtaskComparison", "Surrogate", "Target", "TraceResult",
    "TracingError", "argmax_trace", "build_surrogate", "compare_graphs", "compare_subtasks", "compute_graph",
    "cut_totals", "edge_list", "graph_to_json", "head_activity", "resolve_target", "source_mask", "top_paths",
    "trace_prompt", "traced_token_line", "write_trace",
]


def resolve_target(tokenizer, target, logits_last) -> Target:
    """A :class:`Target` from a Target, a token id, a label string (its first token), or ``None`` (the model's
    top token at the last position)."""
    if isinstance(target, Target):
        return target
    if target is None:
        return Target.logit(int(logits_last.argmax()))
    if isinstance(target, int):
        return Target.logit(target)
    ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if not ids:
        raise TracingError(f"the target {target!r} tokenises to nothing")
    return Target.logit(ids[0])


def traced_token_line(tokenizer, label: str, ids: Sequence[int]) -> str | None:
    """One line naming the token traced for a label of several tokens (its first: the model's next-token
    decision), or ``None`` for a one-token label.

    >>> traced_token_line(tok, "elephant", [412, 9, 77])
    "target 'elephant' is 3 tokens ['Ġele', 'ph', 'ant']: tracing token 0, 'Ġele' (id 412)"
    """
    if len(ids) <= 1:
        return None
    pieces = tokenizer.convert_ids_to_tokens(list(ids))
    return f"target {label!r} is {len(ids)} tokens {pieces}: tracing token 0, {pieces[0]!r} (id {ids[0]})"


@dataclass
class TraceResult:
    """One traced prompt: the surrogate, the exact graph (sources as requested), top paths, and the argmax
    tracer's result when ``method='argmax'``."""

    sur: Surrogate
    target: Target
    graph: AttributionGraph
    full_graph: AttributionGraph
    paths: list[Path]
    method: str
    argmax: ArgmaxTrace | None = None

    def summary(self) -> dict:
        tok = self.sur.tokens
        out = {"method": self.method, "n_tokens": self.sur.n_pos, "target": [list(c) for c in self.target.coef],
               "target_definition": self.full_graph.target_info["definition"],
               "softcap": self.full_graph.target_info["softcap"],
               "parallel_residual": self.sur.parallel,
               "readout": self.full_graph.target_info.get("readout"),
               "value": self.full_graph.value,
               "real": self.full_graph.real, "completeness_rel_err": self.full_graph.completeness_rel_err,
               "sources": [int(i) for i in self.graph.sources.nonzero().flatten()],
               "restricted_value": self.graph.value, "tokens": list(tok), "n_layers": self.sur.n_layers,
               "paths": [dict(p.to_dict(), text=p.describe(tok)) for p in self.paths]}
        if self.argmax is not None:
            out["argmax"] = self.argmax.to_dict(tok)
        return out


def trace_prompt(model, tokenizer, prompt: str | Sequence[int], target=None, method: str = "exact", top_k: int = 20,
                 beam: int = 256, threshold_rank: int = 10, start_pos: int | None = None, end_pos: int | None = None,
                 max_paths: int = 1000) -> TraceResult:
    """Trace one prompt (text, or token ids) for ``target`` (see :func:`resolve_target`).

    ``method='exact'``: the attribution graph and the ``top_k`` paths (beam ``beam``); ``'argmax'``: in addition
    the paper's tracer with rank threshold ``threshold_rank``. ``start_pos/end_pos`` restrict the paths' source
    positions (inclusive; negative from the end). A read-out target (:meth:`Target.readout`) is traced on the
    surrogate cut after its layer (``res.sur`` has ``layer + 1`` blocks).
    """
    if method not in ("exact", "argmax"):
        raise ValueError(f"--method must be exact or argmax (got {method!r})")
    ids = tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else list(prompt)
    sur = build_surrogate(model, ids, tokenizer=tokenizer)
    tgt = resolve_target(tokenizer, target, sur.logits[-1])
    if tgt.is_readout:  # blocks above the read-out's layer cannot change it
        sur = sur.upto(tgt.layer)
    full = compute_graph(sur, tgt)
    restricted = start_pos is not None or end_pos is not None
    graph = compute_graph(sur, tgt, source_mask(sur.n_pos, start_pos, end_pos)) if restricted else full
    paths = top_paths(sur, tgt, k=top_k, beam=beam, start_pos=start_pos, end_pos=end_pos)
    arg = (argmax_trace(sur, tgt, threshold_rank=threshold_rank, max_paths=max_paths, beam=max(beam, max_paths),
                        start_pos=start_pos, end_pos=end_pos) if method == "argmax" else None)
    return TraceResult(sur, tgt, graph, full, paths, method, arg)


def write_trace(res: TraceResult, out: str | FilePath, name: str = "trace", json_top_k: int = 500,
                figures: bool = True) -> list[FilePath]:
    """Write ``<name>.graph.json`` (schema in docs/tracing.md), ``<name>.paths.json`` and (``figures``) the
    figures."""
    out = FilePath(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"{name}.graph.json", out / f"{name}.paths.json"]
    atomic_write_json(files[0], graph_to_json(res.graph, top_k=json_top_k), indent=1)
    atomic_write_json(files[1], res.summary(), indent=1)
    if not figures:
        return files
    from .figures import plot_layer_mass, plot_paths

    tokens = list(res.sur.tokens) or [str(i) for i in res.sur.input_ids.tolist()]
    files.append(plot_paths(res.paths, tokens, res.sur.n_layers, out / "figures" / f"{name}.paths.png"))
    files.append(plot_layer_mass(res.graph, out / "figures" / f"{name}.layer_mass.png"))
    if res.argmax is not None and res.argmax.paths:
        files.append(plot_paths(res.argmax.paths[:30], tokens, res.sur.n_layers,
                                out / "figures" / f"{name}.argmax_paths.png", title="argmax tracer paths"))
    return files
