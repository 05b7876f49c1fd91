"""``--dry-run`` of the long commands (patch, probe, trace, eval, organism build): plans from configs and prompt
lengths (no weights loaded), the device's measured rates, and what is printed.

This is the CLI floor: it knows the commands' options, prompts and samples; the maths on counts is in
:mod:`ivlens.estimate` (``flops``, ``plans``, ``calibrate``, ``model``), which knows nothing above it.
Each ``*_plans`` function mirrors its command's choices (samples, prompts, positions, layer sets, batch sizes)
and returns one plan per model; :func:`spec_plans` picks them for any analysis's spec, :func:`print_plans`
prints them, and :func:`dry_run` (spec → printed plan) is what every command calls when given ``--dry-run`` (it
then exits 0) and what ``ivlens run --dry-run`` calls per step.

>>> plans = patch_plans(["tests/data/olmo2-1124-7b-config"], "adjectives", "adj_ant", layers="triplets",
...                     positions="first,last", samples=100)
>>> plans[0].counts["rows"], plans[0].peak_bytes / 1e9
(1097600, 31.8...)
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence

import numpy as np
import torch
from rich.console import Console

from ivlens.estimate.calibrate import (
    copy_rate,
    gemm_rate,
    layer_latency,
    machine_load,
    model_gemm_shapes,
    op_latency,
    train_step_latency,
)
from ivlens.estimate.flops import ModelShape, prompt_flops
from ivlens.estimate.inputs import (
    chosen_samples,
    model_infos,
    plan_budget,
    with_startup,
)
from ivlens.estimate.model import ModelInfo
from ivlens.estimate.plans import (
    DTYPE_BYTES,
    AnswerTrie,
    PatchTarget,
    Plan,
    Rates,
    TrainStage,
    add_answer_scoring,
    add_figures,
    add_startup,
    eval_plan,
    patch_plan,
    probe_plan,
    seconds,
    train_plan,
    trie_work,
)
from ivlens.probing.cost import probe_layer_latency
from ivlens.tracing.dry_run import trace_plans

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- patch
_ENGINE_CACHE: dict[tuple, tuple[int, int]] = {}


def engine_work(chunk: Sequence[PatchTarget], layer_sets, n_layers: int, group_rows, continued: bool = False,
                ) -> tuple[int, int, int]:
    """The patching engine's own count (:func:`ivlens.patching.trie.plan_work`) for one chunk: executed layer-token
    evaluations, unembedded rows and layer calls, without running anything.

    ``plan_work`` runs once per distinct target shape (length, positions) and the counts add up over targets
    (groups hold whole targets' tries); the layer calls are counted per suffix length over the whole chunk, as
    the engine groups them (:func:`ivlens.estimate.plans.trie_work`). ``continued``: rows scored at the answer
    level (no last-position identity)."""
    try:
        from ivlens.patching.trie import RowSpec, plan_work
    except ImportError:  # an engine without a counting function: the trie's own count
        return trie_work(chunk, layer_sets, n_layers, group_rows)
    evals = unembed = 0
    sets = tuple(layer_sets)
    for t in chunk:
        key = (t.n_tokens, t.positions, n_layers, hash(sets), continued)
        if key not in _ENGINE_CACHE:
            rows = [RowSpec(0, 0, s, p) for p in t.positions for s in sets]
            st = plan_work(rows, [t.n_tokens], n_layers, group_rows=1 << 40, continued=continued)
            _ENGINE_CACHE[key] = (st.executed_evals, st.unembed_rows)
        e, u = _ENGINE_CACHE[key]
        evals, unembed = evals + e, unembed + u
    _, _, calls = trie_work(chunk, layer_sets, n_layers, group_rows)
    return evals, unembed, calls


def patch_plans(models: Sequence[str], task: str, subtask: str | None, *, layers: str = "single",
                positions: str = "first,last", samples: int | None = None, mode: str = "transfer",
                target: str = "bare", fmt: str = "raw", chunk_size: int = 25, batch_size: int | None = None,
                seed: int = 0, dtype: str = "float32", device: str = "cpu", memory_budget=None,
                figures: bool = True, split: str = "all", score: str = "first-token",
                infos: Sequence[ModelInfo] | None = None, linear_estimate: str = "auto", screen: int | None = None,
                remote: bool = False) -> list[Plan]:
    """The plan of ``ivlens patch`` with these options, one per model (see :func:`ivlens.patching.sweep.patch_sweep`).

    ``score="answer"``: the engine runs the targets once, keeping the rows' keys/values, and each distinct row (and
    each target-only and instructed run) scores the candidates' token trie against them (:func:`answer_trie`).
    With the linear estimate on (:func:`ivlens.patching.linear.linear_on`), every sample adds one forward and one
    backward per scored logit (:func:`add_linear_estimate`); ``screen=K`` runs the engine on the singles and at
    most ``K`` sets per size and position (:func:`screened_stand_in`)."""
    from ivlens.patching.linear import linear_on
    from ivlens.patching.plan import PatchPlan, resolve_position
    from ivlens.patching.sweep import starts_with_bos
    from ivlens.tasks import instructed_prompt, instruction_prompt, load_task, query_prompt
    from ivlens.tasks.prompts import AnswerCandidates

    t = load_task(task)
    sub = t.subtask(subtask or t.subtask_names[0])
    other = t.other(sub.name) if t.is_contrastive else None
    budget = plan_budget(memory_budget, device)
    plans = []
    for info in infos or model_infos(models):
        tok = info.tokenizer
        chosen = chosen_samples(t, samples, seed, split, info)
        plan = PatchPlan.build(layers, positions, info.shape.n_layers)
        all_sets = plan.layer_sets
        linear = linear_on(linear_estimate, screen, all_sets, score=score, remote=remote)
        if screen is not None:
            plan = plan.with_layer_sets(screened_stand_in(all_sets, screen, len(plan.positions)))
        labels = AnswerCandidates.of(t, sub.name).labels if score == "answer" else ()
        targets, trie = [], None
        for s in chosen:
            instructed = instructed_prompt(tok, t, s, sub.instruction, fmt)
            tgt = (query_prompt(tok, t, s, fmt, query_style=target) if mode == "transfer"
                   else instructed_prompt(tok, t, s, t.subtask(other).instruction, fmt))
            has_bos = starts_with_bos(tok, tgt)
            pos = tuple(dict.fromkeys(resolve_position(p, len(tgt), t_inst=tgt.t_inst, has_bos=has_bos)
                                      for p in plan.positions))
            targets.append(PatchTarget(len(tgt), pos, len(instructed)))
            if labels and trie is None:
                trie = answer_trie(tok, tgt, labels)
        src = len(instruction_prompt(tok, sub.instruction, fmt))
        work = functools.partial(engine_work, continued=True) if trie is not None else engine_work
        p = patch_plan(info.shape, targets, plan.layer_sets, src, dtype=dtype, chunk_size=chunk_size, budget=budget,
                       batch_size=batch_size, n_positions=len(plan.positions), model=info.name, engine_work=work,
                       answer=trie)
        p.notes.append(f"{t.name}/{sub.name}, {len(chosen)} samples ({split}), {layers} × {positions}, target "
                       f"{target}, score {score}, memory budget {budget / 2**30:.2f} GiB")
        if linear:
            add_linear_estimate(p, info.shape, [x.n_tokens for x in targets], 2 if other is not None else 1, dtype)
        if screen is not None:
            p.counts["ranked_sets"] = len(all_sets)
            p.notes.append(f"--screen {screen}: {len(plan.layer_sets):,} of {len(all_sets):,} layer sets run exactly "
                           f"(the singles and at most {screen} per size and position; which ones the linear "
                           "estimate decides, so the count is an upper bound and the sets a stand-in)")
        add_figures(p, 2 if figures and not plans else 0)  # single layers and pair heatmaps, once
        plans.append(with_startup(p, info, dtype, not plans))
    return plans


def answer_trie(tok, prompt, labels: Sequence[str]) -> AnswerTrie:
    """The token trie answer-level scoring runs for ``labels`` after ``prompt`` (a representative prompt: labels
    tokenise alike after every prompt of a format), as sizes (:class:`~ivlens.estimate.plans.AnswerTrie`)."""
    from ivlens.scoring import ContinuationTrie
    from ivlens.tasks import label_token_ids

    conts = [label_token_ids(tok, prompt, lab) for lab in labels]
    trie = ContinuationTrie.build(1, [0] * len(conts), conts)
    return AnswerTrie(len(labels), tuple(len(x) for x in trie.token[1:]))


def screened_stand_in(layer_sets: Sequence[tuple[int, ...]], k: int, n_positions: int) -> tuple[tuple[int, ...], ...]:
    """What ``--screen k`` runs, for counting before the estimate exists: the singles and, per set size ≥ 2, at
    most ``k × n_positions`` sets (each position's top ``k``, at most all of them), spread evenly over the size's
    sets (the ranking picks them by the data; spreading them gives a typical mix of first layers)."""
    by_size: dict[int, list[tuple[int, ...]]] = {}
    for s in layer_sets:
        by_size.setdefault(len(s), []).append(s)
    out: list[tuple[int, ...]] = []
    for size, sets in by_size.items():
        n = len(sets) if size == 1 else min(len(sets), k * n_positions)
        idx = sorted({int(round(x)) for x in np.linspace(0, len(sets) - 1, n)}) if n else []
        out += [sets[i] for i in idx]
    return tuple(out)


def add_linear_estimate(p: Plan, shape: ModelShape, lengths: Sequence[int], n_scores: int, dtype: str) -> Plan:
    """The linear estimate's cost (:mod:`ivlens.patching.linear`): per target (``lengths``: the targets' tokens)
    one forward and ``n_scores`` backward passes (the label's logit, and the alternative's where the task has
    one), each backward about twice a forward; one target at a time, so its memory is one prompt's activations
    kept for the backward (counted beyond the engine's working set, which is free by then)."""
    from ivlens.estimate.plans import patch_row_bytes

    p.flops += sum(prompt_flops(shape, n) * (1 + 2 * n_scores) for n in lengths)
    p.layer_calls += len(lengths) * shape.n_layers * (1 + 2 * n_scores)
    p.counts["gradient_passes"] = len(lengths)
    widest = max(lengths, default=0)
    graph = shape.n_layers * patch_row_bytes(shape, widest, widest, dtype)
    extra = max(0, graph - p.memory.get("engine working set", 0))
    if extra:
        p.memory["linear estimate's backward (one sample)"] = extra
    p.notes.append(f"linear estimate: one forward + {n_scores} backward per sample (--linear-estimate off drops it)")
    return p


# --------------------------------------------------------------------------------------------- steer
def steer_plans(spec, infos: Sequence[ModelInfo] | None = None) -> list[Plan]:
    """The plan of ``ivlens steer`` for a :class:`~ivlens.specs.SteerSpec`, one per model: patching's plan
    (:func:`ivlens.estimate.plans.patch_plan`) with the engine's own count of the additive rows
    (:func:`ivlens.patching.trie.plan_work` with ``edit="add"``), plus the IV collection of the vectors."""
    from ivlens.patching.sweep import starts_with_bos
    from ivlens.patching.trie import RowSpec, plan_work
    from ivlens.probing.collect import parse_layers
    from ivlens.probing.instructions import instruction_set
    from ivlens.steering.plan import parse_steer_positions, resolve_span
    from ivlens.steering.vectors import parse_alphas, parse_vectors
    from ivlens.tasks import instructed_prompt, instruction_prompt, load_task, query_prompt

    t = load_task(spec.task)
    sub = t.subtask(spec.subtask or t.subtask_names[0])
    n_src = len(parse_vectors(spec.vectors)) * len(parse_alphas(spec.alphas))
    positions = parse_steer_positions(spec.positions)
    budget = plan_budget(spec.memory_budget, spec.device)
    n_instr = len(instruction_set([t], "instructions", None, None, spec.max_per_subtask))
    plans = []
    for info in infos or model_infos(list(spec.models), require_adapter=True):
        tok, L = info.tokenizer, info.shape.n_layers
        layers = parse_layers(spec.layers, L)
        chosen = chosen_samples(t, spec.samples, spec.seed, spec.split, info)
        targets, spans = [], {}
        for s in chosen:
            tgt = query_prompt(tok, t, s, spec.format, query_style=spec.target)
            has_bos = starts_with_bos(tok, tgt)
            sp = tuple(resolve_span(p, len(tgt), has_bos=has_bos) for p in positions)
            spans[len(tgt), tuple(x[0] for x in sp)] = sp
            targets.append(PatchTarget(len(tgt), tuple(x[0] for x in sp),
                                       len(instructed_prompt(tok, t, s, sub.instruction, spec.format))))

        def work(chunk, _sets, n_layers, group_rows, spans=spans, layers=layers):
            rows, lengths = [], []
            for b, tg in enumerate(chunk):
                lengths.append(tg.n_tokens)
                rows += [RowSpec(b, v, (layer,), tok_i, span) for v in range(n_src) for layer in layers
                         for tok_i, span in spans[tg.n_tokens, tg.positions]]
            st = plan_work(rows, lengths, n_layers, group_rows=group_rows, edit="add")
            return st.executed_evals, st.unembed_rows, st.layer_calls

        src = len(instruction_prompt(tok, sub.instruction, spec.format))
        p = patch_plan(info.shape, targets, [(layer,) for layer in layers] * n_src, src, dtype=spec.dtype,
                       chunk_size=spec.chunk_size, budget=budget, batch_size=spec.batch_size,
                       n_positions=len(positions), model=info.name, engine_work=work)
        p.command = "steer"
        p.flops += n_instr * prompt_flops(info.shape, src)
        p.counts["forward_passes"] += n_instr
        p.notes.append(f"{t.name}/{sub.name}, {len(chosen)} samples ({spec.split}), {n_src} vector × α, {len(layers)} layers × "
                       f"{spec.positions}; {n_instr} instruction IVs for the vectors; memory budget "
                       f"{budget / 2**30:.2f} GiB")
        add_figures(p, len(parse_vectors(spec.vectors)) if spec.figures and not plans else 0)
        plans.append(with_startup(p, info, spec.dtype, not plans))
    return plans


# --------------------------------------------------------------------------------------------- probe
def probe_plans(models: Sequence[str], tasks: Sequence[str], *, layers: str = "all", varying: str = "instructions",
                user_instructions: dict | None = None, fmt: str = "raw", batch_size: int | None = None,
                folds: int = 5, max_per_subtask: int | None = None, dtype: str = "float32", device: str = "cpu",
                memory_budget=None, infos: Sequence[ModelInfo] | None = None) -> list[Plan]:
    """The plan of ``ivlens probe``, one per model."""
    from pathlib import Path

    import pandas as pd

    from ivlens.probing.collect import parse_layers
    from ivlens.probing.instructions import instruction_set, organism_heldout
    from ivlens.probing.run import probe_specs
    from ivlens.tasks import instruction_prompt

    budget = plan_budget(memory_budget, device)
    plans = []
    for info in infos or model_infos(models):
        held = organism_heldout(Path(info.path)) if Path(info.path).is_dir() else None
        rows = instruction_set(list(tasks), varying, user_instructions, held, max_per_subtask)
        lengths = [len(instruction_prompt(info.tokenizer, r.instruction, fmt)) for r in rows]
        n_layers = len(parse_layers(layers, info.shape.n_layers))
        classes = {(r.task, r.subtask) for r in rows}
        try:
            specs = probe_specs(pd.DataFrame([r.to_dict() for r in rows]), varying)  # the run's own probes
        except ValueError:  # a single class: the run itself refuses, with its own message
            specs = []
        n_probes = len(specs)
        layer_seconds = sum(probe_layer_latency(int(mask.sum()), info.shape.d_model, len(names), groups is not None,
                                                folds) for _, _, mask, _, groups, names in specs)
        p = probe_plan(info.shape, lengths, n_layers, n_probes, dtype=dtype, batch_size=batch_size, budget=budget,
                       folds=folds, n_classes=len(classes), layer_seconds=layer_seconds, model=info.name)
        add_figures(p, n_probes + 5 if not plans else 0)  # accuracy per probe, LDA, PCA, 3 similarity maps
        plans.append(with_startup(p, info, dtype, not plans))
    return plans


# --------------------------------------------------------------------------------------------- trace


# --------------------------------------------------------------------------------------------- eval
def eval_plans(models: Sequence[str], task: str, *, subtask: str | None = None, samples: int | None = None,
               fmt: str = "raw", query_style: str = "formatted", batch_size: int = 16, seed: int = 0,
               dtype: str = "float32", split: str = "all", score: str = "first-token", device: str = "cpu",
               infos: Sequence[ModelInfo] | None = None, **_) -> list[Plan]:
    """The plan of ``ivlens eval``, one per model (every condition of every sample and scored subtask); ``score=
    "answer"`` adds each prompt's cached forward and the candidates' token trie (:func:`answer_trie`)."""
    from ivlens.tasks import build_prompt, label_token_ids, load_task

    t = load_task(task)
    subs = [t.subtask(subtask).name] if subtask else t.subtask_names
    plans = []
    for info in infos or model_infos(models):
        tok = info.tokenizer
        chosen = chosen_samples(t, samples, seed, split, info)
        lengths = []
        for s in chosen:
            for st in subs:
                instrs = [t.subtasks[st].instruction, None]
                if t.is_contrastive:
                    instrs.append(t.subtasks[t.other(st)].instruction)
                lengths += [len(build_prompt(tok, i, s.query, t.field, fmt, query_style)) for i in instrs]
        probe = build_prompt(tok, t.subtasks[subs[0]].instruction, chosen[0].query, t.field, fmt, query_style)
        longest = max(len(label_token_ids(tok, probe, lab)) for st in t.subtasks.values() for lab in st.label_space)
        p = eval_plan(info.shape, lengths, min(longest + 2, 16), dtype=dtype, batch_size=batch_size, model=info.name)
        if score == "answer":  # each prompt once (with its cache), then the candidates' token trie against it
            from ivlens.scoring import node_row_bytes
            from ivlens.tasks.prompts import AnswerCandidates

            trie = answer_trie(tok, probe, AnswerCandidates.of(t, subs[0]).labels)
            budget = plan_budget(None, device) // 2
            cap = max(1, budget // (len(trie.nodes) * node_row_bytes(info.shape, max(lengths) + len(trie.nodes),
                                                                   DTYPE_BYTES[dtype])))
            add_answer_scoring(p, info.shape, lengths, trie, batch_size=batch_size, node_cap=cap, dtype=dtype)
        plans.append(with_startup(p, info, dtype, not plans))
    return plans


# --------------------------------------------------------------------------------------------- organism
#: Padded tokens per row of each training stage: pretraining rows are packed to ``seq_len``; SFT batches pad to
#: their longest row (33 tokens on average in the v6 build: plain-text rows of 3 sentences), DPO batches to their
#: longest prompt + answer (29).
TRAIN_ROW_TOKENS = {"sft": 33, "dpo": 32}


def organism_plans(size: str = "small", variant: str = "gist", measure: bool = True, device: str = "cpu",
                   time_steps: bool = True, threads: int = 2) -> list[Plan]:
    """The plan of ``ivlens organism build`` (the sizes of :data:`ivlens.organism.train.SIZES`).

    ``time_steps``: time one real optimiser step of each stage on ``device`` (a model of the organism's config,
    random weights; about 3 s in all) instead of modelling training from FLOPs and layer calls; a DPO step is a
    training step on the chosen and rejected rows together plus a no-grad forward of the reference model."""
    from functools import partial

    from ivlens.organism.train import SIZES, pretrain_optimizers

    spec = SIZES[size]
    shape = organism_shape(size)
    seq = {"pretrain": spec.seq_len, **TRAIN_ROW_TOKENS}
    stages = [TrainStage("pretrain", spec.pretrain_steps, spec.pretrain_batch, seq["pretrain"]),
              TrainStage("sft", spec.sft_steps, spec.sft_batch, seq["sft"]),
              TrainStage("dpo", spec.dpo_steps, spec.dpo_batch, seq["dpo"], passes=8)]
    step_seconds = None
    if time_steps:
        config = organism_recipe_info("organism", size).config
        pre, sft = stages[:2]
        step_seconds = {"pretrain": train_step_latency(config, pre.batch, pre.seq_len, device,
                                                       optimizers=partial(pretrain_optimizers, size=spec),
                                                       optimizer_name=spec.pretrain_optimizer),
                        "sft": train_step_latency(config, sft.batch, sft.seq_len, device)}
        dpo = stages[2]
        step_seconds["dpo"] = (train_step_latency(config, 2 * dpo.batch, dpo.seq_len, device)
                               + train_step_latency(config, 2 * dpo.batch, dpo.seq_len, device, forward_only=True))
    # the card's measurements: per stage and task, ~110 samples × ~16 scored prompts, and single-layer IV transfer
    plan = train_plan(shape, stages, measure_prompts=3 * 2 * 110 * 16 if measure else 0, step_seconds=step_seconds,
                      model=f"organism-{variant} ({size})")
    add_startup(plan, shape, "float32")
    plan.threads = threads
    plan.notes.append(f"{variant} variant, {shape.n_params / 1e6:.1f} M parameters; tokenizer training and data "
                      "generation not counted" + ("; training time from one timed step per stage" if time_steps else ""))
    return [plan]


def organism_build_seconds(size: str = "small", variant: str = "gist", measure: bool = True,
                           threads: int = 2) -> float:
    """The dry run's estimate of ``ivlens organism build``'s wall time on this machine as it is loaded now
    (:func:`organism_plans` with its timed steps at this machine's rates): what the build and the main job print
    before they start one. Takes about 3 s."""
    plan = organism_plans(size, variant, measure, threads=threads)[0]
    shape = organism_shape(size)
    rates, _ = measure_rates(shape, "cpu", "float32", organism_recipe_info("organism", size).config)
    return seconds(plan, dataclasses.replace(rates, threads=threads))

# --------------------------------------------------------------------------------------------- printing
def measure_rates(shape: ModelShape, device: str = "cpu", dtype: str = "float32",
                  config=None) -> tuple[Rates, str | None]:
    """This device's rates on ``shape``'s matrices (per CPU-second of one thread on a CPU, with the machine's load);
    falls back to the CPU (with a note) when ``device`` is not available here."""
    note = None
    dev = "cpu" if device == "auto" else device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        note = f"--device {device} is not available on this machine: timed on the CPU instead"
        dev = "cpu"
    rate = gemm_rate(model_gemm_shapes(shape), dev, dtype)
    cores, others = machine_load() if dev == "cpu" else (0, 0.0)
    if config is None:  # an OLMo-2 layer stands in
        from transformers import AutoConfig

        config = AutoConfig.for_model("olmo2")
    lat = layer_latency(config, dev, dtype)
    return Rates(rate, op_latency(dev, dtype), copy_rate(dev), lat, dev, dtype,
                 threads=torch.get_num_threads(), cores=cores, others=others), note


# --------------------------------------------------------------------------------------------- printing
def human_time(s: float) -> str:
    for unit, n in (("days", 86400), ("h", 3600), ("min", 60)):
        if s >= 2 * n:
            return f"{s / n:.1f} {unit}"
    return f"{s:.1f} s"


def gigabytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def print_plans(plans: Sequence[Plan], shapes: Sequence[ModelShape], device: str = "cpu", dtype: str = "float32",
                together: bool = False, console: Console | None = None, configs: Sequence | None = None,
                remote: bool = False) -> dict:
    """Print every plan (counts, FLOPs, peak memory, time on ``device``) and, for several, the total; returns the
    same figures as a dict. ``together``: the command loads all its models at once (patch, trace, eval), so the
    peak holds every model's weights; otherwise (probe) one model at a time. ``remote``: the compute runs on
    NDIF (:func:`print_remote_plans`)."""
    console = console or Console(soft_wrap=True)
    if remote:
        return print_remote_plans(plans, shapes, console)
    out: dict = {"plans": [], "device": device, "dtype": dtype}
    total_s = 0.0
    for i, (p, shape) in enumerate(zip(plans, shapes, strict=True)):
        rates, note = measure_rates(shape, device, dtype, configs[i] if configs else None)
        if p.threads:
            rates = dataclasses.replace(rates, threads=p.threads)
        sec = seconds(p, rates)
        total_s += sec
        d = p.to_dict(rates)
        d["rates"] = {"gemm_flops_per_s": rates.gemm, "op_latency_s": rates.op_latency,
                      "copy_bytes_per_s": rates.copy, "layer_latency_s": rates.layer_latency, "device": rates.device, "threads": rates.threads,
                      "cores": rates.cores, "others": rates.others}
        out["plans"].append(d)
        console.print(f"[bold]dry run: {p.command}[/] · {p.model} ({shape.arch}, {shape.n_layers} layers, d_model "
                      f"{shape.d_model}, {shape.n_params / 1e9:.3g} B parameters, {dtype})", highlight=False)
        console.print("  " + " · ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in p.counts.items()), highlight=False)
        console.print(f"  FLOPs {p.flops:.3g} · peak memory ≈ {gigabytes(p.peak_bytes)} ("
                      + ", ".join(f"{k} {gigabytes(v)}" for k, v in p.memory.items()) + ")", highlight=False)
        share = (f"; {rates.parallel_cores():.2g} of {rates.cores} cores free for its {rates.threads} threads "
                 f"(load {rates.others:.1f})" if rates.cores else "")
        idle = ""
        if rates.cores and rates.others + rates.threads > rates.cores:
            idle_s = seconds(p, dataclasses.replace(rates, others=0.0))
            idle = f" now, ≈ {human_time(idle_s)} with the machine to itself"
            d["idle_seconds"] = idle_s
        per = " per CPU-second of one thread" if rates.cores else "/s"
        console.print(f"  time ≈ {human_time(sec)}{idle} on {rates.device} (measured here: GEMM {rates.gemm / 1e9:.1f} "
                      f"GFLOP{per} on the model's shapes, {rates.layer_latency * 1e3:.2f} ms per layer call, "
                      f"{rates.op_latency * 1e6:.1f} µs per small kernel, {rates.copy / 1e9:.1f} GB{per} "
                      f"copied{share})", highlight=False)
        for n in ([note] if note else []) + p.notes:
            console.print(f"  note: {n}", highlight=False)
        if not p.fits:
            console.print("  [bold red]does not fit the memory budget[/]")
    peak = max(p.peak_bytes for p in plans)
    if together and len(plans) > 1:
        peak += sum(p.memory.get("weights", 0) for p in plans) - max(p.memory.get("weights", 0) for p in plans)
    idle_total = sum(d.get("idle_seconds", d["seconds"]) for d in out["plans"])
    if len(plans) > 1:
        how = "all models loaded together" if together else "models loaded one after another"
        idle = f" now, ≈ {human_time(idle_total)} with the machine to itself" if idle_total < total_s else ""
        console.print(f"[bold]total[/]: time ≈ {human_time(total_s)}{idle}, peak memory ≈ {gigabytes(peak)} ({how})",
                      highlight=False)
    out["total_seconds"], out["idle_seconds"], out["peak_bytes"] = total_s, idle_total, peak
    return out


def print_remote_plans(plans: Sequence[Plan], shapes: Sequence[ModelShape], console: Console) -> dict:
    """``--remote``: the work each plan sends to NDIF (rows, forward passes), and no local memory or time: the
    compute runs on NDIF's GPUs, whose speed and queue this machine cannot measure."""
    out: dict = {"plans": [], "remote": "ndif", "total_seconds": 0.0, "idle_seconds": 0.0, "peak_bytes": 0}
    for p, shape in zip(plans, shapes, strict=True):
        console.print(f"[bold]dry run: {p.command}[/] · {p.model} ({shape.arch}, {shape.n_layers} layers, d_model "
                      f"{shape.d_model}, {shape.n_params / 1e9:.3g} B parameters) on NDIF", highlight=False)
        counts = dict(p.counts)
        if p.command.startswith("patch"):  # no trie sharing on NDIF: every row is one whole forward
            counts = {k: counts[k] for k in ("samples", "rows", "layer_sets") if k in counts}
            counts["forward_passes"] = counts.get("rows", 0) + 2 * counts.get("samples", 0) + 1
        console.print("  " + " · ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in counts.items()), highlight=False)
        console.print("  note: --remote: the compute runs on NDIF, so no local memory or time estimate applies (only "
                      "the model's config and tokenizer are read here)", highlight=False)
        out["plans"].append({"command": p.command, "model": p.model, "counts": counts, "flops": p.flops,
                             "remote": "ndif"})
    return out


# --------------------------------------------------------------------------------------------- any spec
def eval_spec_plans(s, infos: Sequence[ModelInfo]) -> list[Plan]:
    """:func:`eval_plans` of an :class:`~ivlens.eval.EvalSpec`."""
    return eval_plans([], s.task, subtask=s.subtask, samples=s.samples, fmt=s.format, query_style=s.query_style,
                      batch_size=s.batch_size, seed=s.seed, dtype=s.dtype, split=s.split, score=s.score, device=s.device,
                      infos=infos)


def patch_spec_plans(s, infos: Sequence[ModelInfo]) -> list[Plan]:
    """:func:`patch_plans` of a :class:`~ivlens.patching.PatchSpec` (with the source model's note)."""
    plans = patch_plans([], s.task, s.subtask, layers=s.layers, positions=s.positions, samples=s.samples,
                        mode=s.mode, target=s.target, fmt=s.format, chunk_size=s.chunk_size, batch_size=s.batch_size,
                        seed=s.seed, dtype=s.dtype, device=s.device, memory_budget=s.memory_budget,
                        figures=s.figures, split=s.split, score=s.score, infos=infos,
                        linear_estimate=s.linear_estimate, screen=s.screen, remote=s.remote)
    if s.source_model and plans:
        plans[0].notes.append(f"IVs from {s.source_model}: one more model in memory, one source run")
    return plans


def probe_spec_plans(s, infos: Sequence[ModelInfo]) -> list[Plan]:
    """:func:`probe_plans` of a :class:`~ivlens.probing.ProbeSpec`."""
    return probe_plans([], list(s.tasks), layers=s.layers, varying=s.varying, user_instructions=dict(s.instructions),
                       fmt=s.format, batch_size=s.batch_size, folds=s.folds, max_per_subtask=s.max_per_subtask,
                       dtype=s.dtype, device=s.device, memory_budget=s.memory_budget, infos=infos)


def trace_spec_plans(s, infos: Sequence[ModelInfo]) -> list[Plan]:
    """:func:`~ivlens.tracing.dry_run.trace_plans` of a :class:`~ivlens.tracing.TraceSpec`."""
    return trace_plans([], task=s.task, subtask=s.subtask, sample=s.sample, prompt=s.prompt, compare=s.compare,
                       samples=s.samples, fmt=s.format, beam=s.beam, max_tokens=s.max_tokens, seed=s.seed,
                       dtype=s.dtype, device=s.device, memory_budget=s.memory_budget, split=s.split, infos=infos)


def organism_spec_plans(s, infos: Sequence[ModelInfo] = ()) -> list[Plan]:
    """:func:`organism_plans` of an :class:`~ivlens.organism.OrganismSpec` (no models: it builds them)."""
    return organism_plans(s.size, s.variant, s.measure, threads=s.threads)


def organism_shape(size: str = "small") -> ModelShape:
    """The organism's sizes (:data:`ivlens.organism.train.SIZES`) as a :class:`ModelShape`."""
    from ivlens.organism.train import SIZES

    spec = SIZES[size]
    shape = ModelShape("olmo2", spec.n_layers, spec.d_model, spec.n_heads, spec.n_heads, spec.d_model // spec.n_heads,
                       spec.d_mlp, spec.vocab_size, gated_mlp=True, tied=True)
    return shape.with_params(shape.count_params())


#: the ``path`` of a :class:`ModelInfo` that stands for an organism not built yet
RECIPE_SUFFIX = " (recipe)"


def organism_recipe_info(name: str, size: str = "small") -> ModelInfo:
    """A dry run's view of an organism that is not built yet: its recipe's sizes and config
    (:data:`ivlens.organism.train.SIZES`), and prompt lengths estimated by
    :class:`~ivlens.estimate.model.ApproxTokenizer`."""
    from transformers import Olmo2Config

    from ivlens.estimate.model import ApproxTokenizer
    from ivlens.organism.data import split_queries as recipe_split
    from ivlens.organism.train import SIZES

    s = SIZES[size]
    config = Olmo2Config(vocab_size=s.vocab_size, hidden_size=s.d_model, intermediate_size=s.d_mlp,
                         num_hidden_layers=s.n_layers, num_attention_heads=s.n_heads, num_key_value_heads=s.n_heads,
                         max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=None,
                         eos_token_id=None, pad_token_id=None)
    note = (f"{name} is not built yet: sized from its recipe ({size}), prompt lengths estimated (no tokenizer "
            "until the build has trained one)")
    return ModelInfo(name, f"{name}{RECIPE_SUFFIX}", organism_shape(size), ApproxTokenizer(None, 0, 0), note, config,
                     split=recipe_split)
