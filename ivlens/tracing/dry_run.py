"""The dry run of ``ivlens trace``: the graph's working memory and time from configs and prompt lengths (no weights),
and the refusal a trace that does not fit prints (also checked by :func:`ivlens.tracing.run.check_trace_memory`
before a real trace starts)."""

from __future__ import annotations

from collections.abc import Sequence

from ivlens.budget import available_bytes
from ivlens.estimate.costs import (
    CostEstimate,
    add_figures,
    max_trace_tokens,
    trace_bytes,
    trace_cost,
    weight_bytes,
)
from ivlens.estimate.flops import ModelShape
from ivlens.estimate.inputs import chosen_samples, dry_run_budget, here, model_infos, with_startup
from ivlens.estimate.model import ModelInfo
from ivlens.tasks import instructed_prompt, load_task


def trace_budget(memory_budget, device: str, shape: ModelShape | None = None, dtype: str = "float32") -> int:
    """The tracer's working-memory budget: ``--memory-budget`` if given, else 80 % of the memory available
    now, less the weights when they are not loaded yet (``shape``). The graph cannot be split into batches,
    so the whole free memory is the natural limit, not the batch budget of the other analyses."""
    if memory_budget is not None and str(memory_budget).lower() != "auto":
        return dry_run_budget(memory_budget, device)
    free = int(available_bytes(here(device)) * 0.8)
    return max(0, free - (weight_bytes(shape, dtype) if shape is not None else 0))


def trace_costs(models: Sequence[str], *, task: str | None = None, subtask: str | None = None,
                sample: int | None = None, prompt: str | None = None, compare: bool = False,
                samples: int | None = 50, fmt: str = "raw", beam: int = 256, max_tokens: int | None = None,
                seed: int = 0, dtype: str = "float32", device: str = "cpu", memory_budget=None, split: str = "all",
                infos: Sequence[ModelInfo] | None = None) -> list[CostEstimate]:
    """The cost estimate of ``ivlens trace`` (one prompt, or ``--compare``: four prompts per sample), one per model."""
    costs = []
    for info in infos or model_infos(models):
        tok = info.tokenizer
        if compare:
            t = load_task(task)
            chosen = chosen_samples(t, samples, seed, split, info)
            sa, sb = t.subtask_names  # A, B and the first rephrasing of each (what compare_subtasks traces)
            instr = [t.subtasks[sa].instruction, t.subtasks[sb].instruction,
                     *t.subtasks[sa].rephrasings[:1], *t.subtasks[sb].rephrasings[:1]]
            lengths = [len(instructed_prompt(tok, t, s, i, fmt)) for s in chosen for i in instr]
        elif task is not None:
            t = load_task(task)
            st = t.subtask(subtask or t.subtask_names[0])
            lengths = [len(instructed_prompt(tok, t, t.samples[sample or 0], st.instruction, fmt))]
        else:
            lengths = [len(tok(prompt)["input_ids"])]
        if max_tokens is not None:
            lengths = [min(n, max_tokens) for n in lengths]
        budget = trace_budget(memory_budget, device, info.shape, dtype)
        mode = "compare" if compare else "single"
        p = trace_cost(info.shape, lengths, dtype=dtype, beam=beam, mode=mode, budget=budget, model=info.name)
        add_figures(p, 1 + (not costs) if compare else 2)  # head activity (+ overlap curves) | paths, layer mass
        costs.append(with_startup(p, info, dtype, not costs))
    return costs


def trace_refusal(shape: ModelShape, n_tokens: int, budget: int, dtype: str = "float32", beam: int = 256,
                  mode: str = "single") -> str | None:
    """``None`` when tracing ``n_tokens`` tokens fits ``budget``; else the one message that says what it costs and
    which options make it fit."""
    need = trace_bytes(shape, n_tokens, dtype, beam, mode)
    if need <= budget:
        return None
    L, H = shape.n_layers, shape.n_heads
    fit = max_trace_tokens(shape, budget, dtype, beam, mode)
    return (f"tracing {n_tokens} tokens needs about {need / 1e9:.2f} GB of working memory (its attribution graph is "
            f"L·H·T² = {L}·{H}·{n_tokens}² = {L * H * n_tokens**2:,} entries per tensor), over the memory budget of "
            f"{budget / 1e9:.2f} GB. Trace a shorter context with --max-tokens {fit} (keeps the last {fit} tokens), "
            "choose a shorter prompt or sample, or raise --memory-budget.")


def trace_spec_costs(s, infos: Sequence[ModelInfo]) -> list[CostEstimate]:
    """:func:`~ivlens.tracing.dry_run.trace_costs` of a :class:`~ivlens.tracing.TraceSpec`."""
    return trace_costs([], task=s.task, subtask=s.subtask, sample=s.sample, prompt=s.prompt, compare=s.compare,
                       samples=s.samples, fmt=s.format, beam=s.beam, max_tokens=s.max_tokens, seed=s.seed,
                       dtype=s.dtype, device=s.device, memory_budget=s.memory_budget, split=s.split, infos=infos)

