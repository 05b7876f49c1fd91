"""Run-level tracing analyses, written to a run directory; :func:`ivlens.api.run_trace` calls these.

- :func:`compare_run`: the circuit-selector comparison over samples and models (``compare.parquet``,
  ``compare.json``, ``sample_paths.parquet``: the top paths of the first sample under A and B,
  ``selectivity.parquet``: the gap per model × layer with its controls, :mod:`ivlens.tracing.selectivity`;
  figures). Each (model, sample) is one unit of work saved as a part, so a killed run resumes where it stopped;
  the tables are computed from the parts, so a resumed or merged run writes the same bytes.
- :func:`trace_single`: one prompt's exact paths for one model (``<model>.graph.json``, ``<model>.paths.json``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd

from ivlens.models.load import LoadedModel
from ivlens.runs import RunDir, atomic_write_json, slug
from ivlens.tasks import Sample, Task, load_task
from ivlens.tasks.selection import select_samples, split_queries
from ivlens.units import RunParts, Unit, UnitLoop, unit_key

from .compare import Quartet, SubtaskComparison, compare_subtasks
from .figures import plot_head_activity, plot_overlap_curves, plot_selectivity
from .selectivity import ALPHA, selectivity_rows, verdict_sentences

log = logging.getLogger(__name__)
PARTS = "compare_parts"


def compare_run(models: Sequence[LoadedModel], task: str | Task, run: RunDir, *, samples: int | None = 50,
                split: str = "all", seed: int = 0, fmt: str = "raw", top_k: int = 20, beam: int = 256,
                progress: Callable | None = None, owns: Callable[[int], bool] | None = None,
                base: str | None = None, alpha: float = ALPHA, correction: str = "holm",
                figures: bool = True) -> dict[str, dict]:
    """Trace every selected sample under instruction A and B and a rephrasing of each (A′, B′) for each
    model; returns ``{model: summary}`` (weighted Jaccard A vs B and baseline, per-layer curves, the layer
    where the computations part, completeness error, ``selectivity``: the verdicts per layer and the sentence
    they support) and writes the tables and figures to ``run``. ``base``: the name of the model the others are
    compared with (difference in differences); ``alpha``, ``correction``: the selectivity verdicts' level and
    multiple-comparison correction over layers; ``figures``: draw the figures too (a study's report draws its own
    from the tables).

    Each sample's comparison is saved as a part (``compare_parts/part-m<i>-s<index>.json`` and ``.safetensors``) as soon as it is
    done; samples whose part exists are not traced again. ``owns(unit) -> bool``: trace only these units (model
    by model, sample by sample: a shard, :mod:`ivlens.sharding`) and stop there, before the summaries."""
    t = task if isinstance(task, Task) else load_task(task)
    curves, summaries, rows, examples, quartets = {}, {}, [], [], {}
    parts = RunParts(run, PARTS)
    loop = UnitLoop(parts, owns=owns)  # a unit: one sample of one model

    def sample_part(lm: LoadedModel, unit: Unit[Sample]) -> tuple[dict, dict]:
        """One unit: the comparison of one sample in ``lm``, as a part."""
        return compare_subtasks(lm.model, lm.tokenizer, t, [unit.work], fmt=fmt, top_k=top_k,
                                beam=beam).to_part()

    for mi, lm in enumerate(models):
        chosen = select_samples(t, samples, seed, split_queries(lm.path, lm.name, t, split))
        units = loop.number((unit_key(mi, "s", sample.index), sample) for sample in chosen)
        ctx = progress(f"trace --compare {lm.name}", len(chosen)) if progress else nullcontext(None)
        with ctx as advance:
            loop.run(units, partial(sample_part, lm), progress=_each_unit(advance))
        if owns is not None:  # a shard: its units only, no summaries
            continue
        res = SubtaskComparison.merge([SubtaskComparison.from_part(*parts.read(u.key)) for u in units])
        s = res.summary()
        summaries[lm.name] = s
        curves[f"{lm.name}: A vs B"] = s["per_layer_ab"]
        if s["per_layer_baseline"]:
            curves[f"{lm.name}: rephrasings"] = s["per_layer_baseline"]
        rows += [dict(r, model=lm.name) for r in res.rows]
        examples += [dict(r, model=lm.name) for r in res.example]
        if res.quartets:
            quartets[lm.name] = Quartet.stack(res.quartets)
        if figures:
            plot_head_activity({k: v.numpy() for k, v in res.head_activity.items()},
                               run.figure_path(f"head_activity-{slug(lm.name)}.png"),
                               title=f"{lm.name}: head activity of paths leaving T_inst")
    if owns is not None:
        return {}
    if figures:
        plot_overlap_curves(curves, run.figure_path("overlap_by_layer.png"))
    df = pd.DataFrame(rows)
    for c in [c for c in df.columns if c.endswith("per_layer")]:
        df[c] = df[c].map(json.dumps)
    run.write_table("compare", df)
    if examples:
        run.write_table("sample_paths", pd.DataFrame(examples))
    if quartets:
        sel = selectivity_rows(quartets, base if base in quartets else None, alpha=alpha, correction=correction,
                               seed=seed)
        run.write_table("selectivity", pd.DataFrame(sel))
        if figures:
            plot_selectivity(pd.DataFrame(sel), run.figure_path("selectivity.png"))
        for name, sentence in verdict_sentences(sel).items():
            mine = [r for r in sel if r["model"] == name]
            summaries[name]["selectivity"] = {
                "sentence": sentence, "base": mine[0]["base"],
                "selective_layers": [r["layer"] for r in mine if r["selective"]],
                "more_than_base_layers": [r["layer"] for r in mine if r["did_verdict"] == "more selective than base"],
                "gap": [_finite(r["gap"]) for r in mine], "did": [_finite(r["did"]) for r in mine]}
    else:
        log.warning("no sample has rephrasings of both instructions: no selectivity table")
    atomic_write_json(run.path / "compare.json", summaries, indent=1)
    return summaries


def _each_unit(advance: Callable[[], None] | None) -> Callable[[Unit, bool], None] | None:
    """A :class:`~ivlens.units.UnitLoop` progress callback that advances a progress bar by one per unit."""
    if advance is None:
        return None
    return lambda unit, ran: advance()


def _finite(x: float) -> float | None:
    """``x``, or ``None`` for NaN (JSON has no NaN)."""
    return None if x != x else x


@dataclass
class SingleTrace:
    """One model's trace of one prompt: the :class:`ivlens.tracing.TraceResult`, T_inst in the traced ids
    (``None`` without a task instruction), how many leading tokens ``max_tokens`` cut, and ``note``: which token
    of a multi-token target is traced (:func:`ivlens.tracing.traced_token_line`; ``None`` for one token);
    ``readout``: what a read-out traced (``<model>.readout.json``), ``None`` for a logit."""

    model: str
    result: object
    t_inst: int | None
    cut: int
    note: str | None = None
    readout: dict | None = None


@dataclass(frozen=True)
class TracedPrompt:
    """The prompt one trace reads: token ids, T_inst (``None`` without an instruction), the task and sample, the
    subtask whose instruction it carries and the task's other subtask (``None`` where there is none)."""

    ids: list[int]
    t_inst: int | None
    task: Task | None = None
    sample: object = None
    subtask: str | None = None
    other: str | None = None
    built: object = None  # the ivlens.tasks.prompts.Prompt of a task sample


def traced_prompt(lm: LoadedModel, *, task: str | None, subtask: str | None, sample: int | None,
                  prompt: str | None, fmt: str) -> TracedPrompt:
    """A task sample's instructed prompt (``sample`` default 0, ``subtask`` default the first), or ``prompt``."""
    from ivlens.tasks import TaskError, instructed_prompt

    if task is None:
        return TracedPrompt(list(lm.tokenizer(prompt)["input_ids"]), None)
    t = load_task(task)
    sub = t.subtask(subtask)
    index = sample or 0
    if not 0 <= index < len(t.samples):
        raise TaskError(f"--sample {index} is out of range: task {t.name!r} has samples 0..{len(t.samples) - 1}")
    smp = t.samples[index]
    p = instructed_prompt(lm.tokenizer, t, smp, sub.instruction, fmt)
    return TracedPrompt(list(p.input_ids), p.t_inst, t, smp, sub.name, t.other(sub.name) if t.is_contrastive else None,
                        p)


@dataclass(frozen=True)
class ReadoutPlan:
    """A read-out resolved for one model before anything runs: the ids to trace (cut after the read position and
    to ``max_tokens``), the :class:`~ivlens.tracing.surrogate.Target`, T_inst and the cut in those ids, and what
    was read (``info``)."""

    ids: list[int]
    target: object
    t_inst: int | None
    cut: int
    info: dict


def plan_readout(lm: LoadedModel, *, readout: str, position: str | None, task: str | None, subtask: str | None,
                 sample: int | None, prompt: str | None, fmt: str, max_tokens: int | None,
                 base: Path | None = None) -> ReadoutPlan:
    """Resolve ``--readout``/``--position`` for ``lm``: load the direction (checking run directory, layer, class
    and length), find the position in the traced prompt, and cut the prompt after it (causal: later tokens cannot
    write into ``resid_l[t]``). Raises :class:`~ivlens.tracing.readout.ReadoutError` (one line naming the option)."""
    from .readout import load_direction, parse_readout, resolve_position
    from .surrogate import Target

    tp = traced_prompt(lm, task=task, subtask=subtask, sample=sample, prompt=prompt, fmt=fmt)
    pos = resolve_position(position or "last", len(tp.ids), tp.t_inst)
    d = load_direction(parse_readout(readout), model=lm.name, d_model=lm.d_model, n_layers=lm.n_layers,
                       subtask=tp.subtask, other=tp.other, base=base)
    ids = tp.ids[: pos + 1]
    cut = max(0, len(ids) - max_tokens) if max_tokens is not None else 0
    ids = ids[cut:]
    t_inst = None if tp.t_inst is None or tp.t_inst < cut else tp.t_inst - cut
    info = {"readout": readout, "position": position or "last", "pos": pos - cut, "prompt_tokens": len(tp.ids),
            "t_inst": t_inst, "subtask": tp.subtask, "name": d.name, **d.info}
    return ReadoutPlan(ids, Target.readout(d.vector, d.layer, pos - cut, d.name), t_inst, cut, info)


def trace_single(lm: LoadedModel, run: RunDir, *, task: str | None, subtask: str | None, sample: int | None,
                 prompt: str | None, target: str | int | None, method: str, top_k: int, beam: int,
                 threshold_rank: int, start_pos: int | None, end_pos: int | None, from_inst: bool, fmt: str,
                 max_tokens: int | None, readout: ReadoutPlan | None = None, figures: bool = True) -> SingleTrace:
    """Trace a task sample's instructed prompt (or ``prompt``) with ``lm`` and write it to ``run`` (``figures``:
    its figures too); with ``readout`` (:func:`plan_readout`), its direction at its layer and position instead of
    the answer's logit."""
    from ivlens.tasks import TaskError, label_token_ids

    from . import trace_prompt, traced_token_line, write_trace

    ids, t_inst, note = None, None, None
    if readout is not None:
        ids, t_inst, target = readout.ids, readout.t_inst, readout.target
    else:
        if isinstance(target, str):
            note = traced_token_line(lm.tokenizer, target,
                                     lm.tokenizer(target, add_special_tokens=False)["input_ids"])
        if task is not None:
            tp = traced_prompt(lm, task=task, subtask=subtask, sample=sample, prompt=prompt, fmt=fmt)
            ids, t_inst = tp.ids, tp.t_inst
            if target is None:
                answer_ids = label_token_ids(lm.tokenizer, tp.built, tp.sample.answer(tp.subtask))
                note = traced_token_line(lm.tokenizer, tp.sample.answer(tp.subtask), answer_ids)
                target = answer_ids[0]
    cut = readout.cut if readout is not None else 0
    if max_tokens is not None and readout is None:
        if ids is None:
            ids = list(lm.tokenizer(prompt)["input_ids"])
        cut = max(0, len(ids) - max_tokens)
        if cut:
            ids = ids[cut:]
            t_inst = None if t_inst is None or t_inst < cut else t_inst - cut
    if from_inst:
        if t_inst is None:
            raise TaskError("--from-inst needs a task prompt with an instruction (inside --max-tokens)")
        start_pos = end_pos = t_inst
    res = trace_prompt(lm.model, lm.tokenizer, ids if ids is not None else prompt, target=target, method=method,
                       top_k=top_k, beam=beam, threshold_rank=threshold_rank, start_pos=start_pos, end_pos=end_pos)
    write_trace(res, run.path, name=slug(lm.name), figures=figures)
    info = None
    if readout is not None:
        g = res.full_graph
        info = {**readout.info, "model": lm.name, "tokens": list(res.sur.tokens), "value": g.value, "real": g.real,
                "completeness_rel_err": g.completeness_rel_err, "n_layers_traced": g.n_layers}
        atomic_write_json(run.path / f"{slug(lm.name)}.readout.json", info, indent=1)
    return SingleTrace(lm.name, res, t_inst, cut, note, info)


def check_trace_memory(lm: LoadedModel, *, task, subtask, sample, prompt, compare, samples, seed, fmt, beam,
                       max_tokens, dtype, device, memory_budget) -> None:
    """Raise :class:`ivlens.budget.BudgetError` when tracing ``lm``'s longest prompt would not fit the budget."""
    from ivlens.budget import BudgetError
    from ivlens.estimate.flops import ModelShape
    from ivlens.estimate.model import ModelInfo

    from .dry_run import trace_budget, trace_costs, trace_refusal

    shape = ModelShape.from_config(lm.model.config)
    info = ModelInfo(lm.name, str(lm.path), shape, lm.tokenizer)
    cost = trace_costs([], task=task, subtask=subtask, sample=sample, prompt=prompt, compare=compare,
                       samples=samples, fmt=fmt, beam=beam, max_tokens=max_tokens, seed=seed, dtype=dtype,
                       infos=[info])[0]
    n = cost.counts["max_tokens"]
    budget = trace_budget(memory_budget, device)  # weights are loaded: available memory already excludes them
    log.info("%s: tracing up to %d tokens needs about %.2f GB (graph %.2f GB)", lm.name, n,
             cost.peak_bytes / 1e9, cost.memory["graph (L·H·T² tensors)"] / 1e9)
    msg = trace_refusal(shape, n, budget, dtype, beam, "compare" if compare else "single")
    if msg is not None:
        raise BudgetError(f"{lm.name}: {msg}")
