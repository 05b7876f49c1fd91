"""The run contract: one ``run_<analysis>(spec)`` per analysis, the only way to run one.

Each function validates its spec (:mod:`ivlens.specs`) and the models before any directory is made, creates the
run directory (or, with ``resume``, reopens it after checking that its stored spec matches), computes, writes
and finishes. The manifest records the spec and its hash. The CLI commands and the main job are thin callers;
``models`` lets a caller pass models it already loaded (in the order of ``spec.models``). Any spec runs through
:func:`ivlens.analyses.run_spec`, which finds its run in the registry of analyses.

>>> from ivlens.api import run_eval
>>> from ivlens.eval import EvalSpec
>>> run, summary, decides = run_eval(EvalSpec(models=("organism-sft",), task="adjectives", split="heldout"))
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from ivlens.eval import EvalSpec
from ivlens.organism import OrganismSpec
from ivlens.patching import PatchSpec
from ivlens.probing import ProbeSpec
from ivlens.specs import Spec, SpecError
from ivlens.steering import SteerSpec
from ivlens.tracing import TraceSpec

from .models.load import LoadedModel, check_model_files, load_model
from .runs import RunDir, check_out_dir, slug
from .scoped import torch_threads
from .sharding import owner
from .tasks import Task, TaskError, load_task, selection
from .tasks.validate import warn_first_token_clashes
from .units import TablePieces, Unit, UnitLoop, unit_key

log = logging.getLogger(__name__)


def resumable_run(spec: Spec, resume: str | Path) -> RunDir:
    """The run at ``resume``, checked to be continued with ``spec``: of this run format, of ``spec``'s analysis and
    made with the same options that can change a result (else one error naming what differs). Writes nothing."""
    run = RunDir.resume(resume)
    if run.manifest.get("command") != spec.analysis or "spec" not in run.manifest:
        raise SpecError(f"--resume {resume}: that is a {run.manifest.get('command')} run, not {spec.analysis}")
    diffs = type(spec)(**run.manifest["spec"]).differences(spec)
    if diffs:
        raise SpecError(f"--resume {resume}: the run was made with other options: {'; '.join(diffs)}")
    return run


def check_run_target(spec: Spec, out: str | Path | None, resume: str | Path | None) -> None:
    """Refuse, before any model loads, an ``--out`` that cannot hold a run (:func:`check_out_dir`) and a
    ``--resume`` run that cannot be continued with ``spec`` (:func:`resumable_run`)."""
    check_out_dir(out)
    if resume is not None:
        resumable_run(spec, resume)


def start_run(spec: Spec, name: str, *, out: str | Path | None = None, resume: str | Path | None = None,
              models: Sequence[LoadedModel] = (), task: str | None = None) -> RunDir:
    """A new run directory for ``spec``, or the run at ``resume`` when its stored spec matches ``spec`` in every
    option that can change a result (else :class:`SpecError` naming each option, old → new)."""
    described = [m.describe() for m in models]
    if resume is not None:
        run = resumable_run(spec, resume)
        run.manifest.update(spec=spec.model_dump(mode="json"), status="running")  # neutral options: the new values
        run.write_manifest()
        return run
    dump = spec.model_dump(mode="json")
    return RunDir.create(spec.analysis, name, out=out, args=dump, models=described, task=task,
                         seed=getattr(spec, "seed", None), spec=dump, spec_hash=spec.hash())


def stop_shard(run: RunDir, spec: Spec) -> None:
    """End a sharded run after its units of work: the manifest says which shard it holds, and
    :func:`ivlens.merge.merge_runs` finishes the merged run."""
    run.end("shard", shard=getattr(spec, "shard", None))


def load_spec_models(names: Sequence[str], spec: Spec, given: Sequence[LoadedModel] | None) -> list[LoadedModel]:
    """The models ``names`` of ``spec``, loaded as its options say (``given``: already loaded, checked for their
    number; with ``spec.remote``, NDIF stand-ins holding config and tokenizer, the weights staying remote). Part of
    the run contract every analysis's ``run`` uses (``ivlens.analyses``' own packages included)."""
    if given is not None:
        if len(given) != len(names):
            raise SpecError(f"--model: {len(names)} models in the spec but {len(given)} loaded models given")
        return list(given)
    if getattr(spec, "remote", False):  # NDIF: config and tokenizer here, the weights stay there
        from .ndif import open_remote_models

        return open_remote_models(names, revision=spec.revision)
    return [load_model(n, **spec.load_kwargs()) for n in names]


def import_callable(path: str) -> Callable:
    """``package.module:function`` → the function (for user hooks such as ``--judge``)."""
    mod, _, fn = path.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise SpecError(f"--judge: cannot import {path!r}: {e}") from None


# --------------------------------------------------------------------------------------------- eval
def _eval_chunk(spec: EvalSpec, lm: LoadedModel, task: Task, subtasks: Sequence[str], judge: Callable | None,
                advance: Callable[[int], None] | None, unit: Unit[list]) -> dict[str, pd.DataFrame]:
    """One unit of eval: the ``results`` rows of a chunk of ``lm``'s samples (``advance(rows)`` after each
    batch)."""
    from .eval import evaluate

    df = evaluate(lm, task, unit.work, subtasks, fmt=spec.format, query_style=spec.query_style,
                  prefill=spec.prefill, batch_size=spec.batch_size, judge=judge, progress=advance,
                  score=spec.score, warn_clashes=False)
    df.insert(1, "split", spec.split)
    return {"results": df}


def _advance_skipped(advance: Callable[[int], None], per_sample: int, unit: Unit[list], ran: bool) -> None:
    """Advance the progress bar over a chunk that was not computed now (done already, or another shard's): a
    computed one advanced batch by batch."""
    if not ran:
        advance(len(unit.work) * per_sample)


class EvalResult(NamedTuple):
    """What :func:`run_eval` produced: the run and its summary and decides tables (empty for one shard,
    ``spec.shard``; ``decides`` also where the task is not contrastive)."""

    run: RunDir
    summary: pd.DataFrame
    decides: pd.DataFrame


def run_eval(spec: EvalSpec, *, models: Sequence[LoadedModel] | None = None, out: str | Path | None = None,
             resume: str | Path | None = None, progress: Callable | None = None) -> EvalResult:
    """Evaluate every model on ``spec.task``; writes ``results.parquet`` (one row per sample × subtask ×
    condition, streamed as unit files of ``spec.chunk_size`` samples), ``summary.parquet`` and ``decides.parquet``.
    Returns an :class:`EvalResult` (``run, summary, decides = run_eval(...)`` unpacks it)."""
    from .eval import instruction_decides, summarize

    check_run_target(spec, out, resume)  # before any model loads
    t = load_task(spec.task)
    subtasks = [t.subtask(spec.subtask).name] if spec.subtask else t.subtask_names
    judge = import_callable(spec.judge) if spec.judge else None
    lms = load_spec_models(spec.models, spec, models)
    chosen = {lm.name: selection.select_samples(t, spec.samples, spec.seed,
                                                selection.split_queries(lm.path, lm.name, t, spec.split))
              for lm in lms}
    run = start_run(spec, t.name, out=out, resume=resume, models=lms, task=t.name)
    pieces = TablePieces(run, ("results",))
    loop = UnitLoop(pieces, owns=owner(spec.shard))  # a unit: a chunk of one model's samples
    warned: set[tuple[str, str]] = set()
    for mi, lm in enumerate(lms):
        picked = chosen[lm.name]
        # once per task and subtask in the run: not per chunk, not per model
        warn_first_token_clashes(lm.tokenizer, t, subtasks, spec.format, spec.score, seen=warned)
        per_sample = len(subtasks) * (3 if t.is_contrastive else 2)  # scored subtasks × conditions
        units = loop.number((unit_key(mi, "c", ci // spec.chunk_size), picked[ci:ci + spec.chunk_size])
                            for ci in range(0, len(picked), spec.chunk_size))
        ctx = progress(f"eval {lm.name}", len(picked) * per_sample) if progress else contextlib.nullcontext(None)
        with ctx as advance:
            loop.run(units, partial(_eval_chunk, spec, lm, t, subtasks, judge, advance),
                     progress=partial(_advance_skipped, advance, per_sample) if advance else None)
    if spec.shard is not None:
        stop_shard(run, spec)
        return EvalResult(run, pd.DataFrame(), pd.DataFrame())
    results = pieces.read("results")
    summary = summarize(results)
    decides = instruction_decides(results) if t.is_contrastive and len(subtasks) == 2 else pd.DataFrame()
    run.write_table("results", results)
    run.write_table("summary", summary)
    if not decides.empty:
        run.write_table("decides", decides)
    run.finish()
    return EvalResult(run, summary, decides)


# --------------------------------------------------------------------------------------------- patch
@dataclass
class PatchResult:
    """What :func:`run_patch` produced: the run, the sweep (rows, baselines, engine stats) and its analysis."""

    run: RunDir
    sweep: object  # ivlens.patching.sweep.SweepResult
    analysis: object  # ivlens.patching.analysis.Analysis; None for one shard (``spec.shard``)


def run_patch(spec: PatchSpec, *, models: Sequence[LoadedModel] | None = None,
              source: LoadedModel | None = None, out: str | Path | None = None, resume: str | Path | None = None,
              progress: Callable[[int, int], None] | None = None) -> PatchResult:
    """Patch the IVs of ``spec.layers`` × ``spec.positions`` into every selected sample's target, for every model
    side by side (unit files of ``spec.chunk_size`` samples), then interactions and figures."""
    from .budget import parse_bytes
    from .patching.analysis import analyse
    from .patching.plan import PatchPlan
    from .patching.sweep import patch_sweep
    from .tasks import require_contrastive

    check_run_target(spec, out, resume)  # before any model loads
    if spec.memory_budget is not None and spec.memory_budget.strip().lower() != "auto":
        parse_bytes(spec.memory_budget)  # a bad value fails here, before any model loads
    t = load_task(spec.task)
    subtask = t.subtask(spec.subtask or t.subtask_names[0]).name
    if spec.mode == "contrastive":
        require_contrastive(t, analysis="--mode contrastive")
    lms = load_spec_models(spec.models, spec, models)
    if source is None and spec.source_model and spec.remote:
        from .ndif import open_remote_models

        source = open_remote_models([spec.source_model], revision=spec.revision, option="--source-model")[0]
    elif source is None and spec.source_model:
        source = load_model(spec.source_model, **spec.load_kwargs())
    src = source
    for lm in lms:  # fail on bad specs before a run directory is made
        PatchPlan.build(spec.layers, spec.positions, lm.n_layers)
        selection.sample_indices(t, spec.samples, spec.seed,
                                 selection.split_queries(lm.path, lm.name, t, spec.split))
    run = start_run(spec, f"{t.name}-{subtask}", out=out, resume=resume, models=lms + ([src] if src else []),
                    task=t.name)
    with torch_threads(spec.threads):
        res = patch_sweep(lms, t, subtask, layers=spec.layers, positions=spec.positions, samples=spec.samples,
                          split=spec.split, mode=spec.mode, source_model=src, target=spec.target, fmt=spec.format,
                          batch_size=spec.batch_size, memory_budget=spec.memory_budget, chunk_size=spec.chunk_size,
                          seed=spec.seed, run=run, device=spec.device, backend=spec.backend, score=spec.score,
                          progress=progress, owns=owner(spec.shard), linear_estimate=spec.linear_estimate,
                          screen=spec.screen, effect=spec.effect)
        if spec.shard is not None:
            stop_shard(run, spec)
            return PatchResult(run, res, None)
        an = analyse(res.rows, effect=spec.effect, correction=spec.correction, alpha=spec.alpha, run=run,
                     make_figures=spec.figures)
    run.finish(engine={k: v.to_dict() for k, v in res.stats.items()}, n_rows=len(res.rows))
    return PatchResult(run, res, an)


# --------------------------------------------------------------------------------------------- steer
@dataclass
class SteerRunResult:
    """What :func:`run_steer` produced: the run, the sweep (rows, baselines, vectors, engine stats) and the
    dose-response table."""

    run: RunDir
    sweep: object  # ivlens.steering.sweep.SteerResult
    dose: pd.DataFrame


def patch_rows_to_compare(spec: SteerSpec, task: str, subtask: str, root: str | Path | None) -> pd.DataFrame:
    """The rows of ``spec.patch_run`` (read from ``root`` when relative), checked to be a finished transfer patch
    run of the same task, subtask, target and format as the steering; else :class:`SpecError` naming the mismatch."""
    path = Path(spec.patch_run)
    if not path.is_absolute() and root is not None:
        path = Path(root) / path
    try:
        run = RunDir.open(path)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise SpecError(f"--patch-run {spec.patch_run}: not a run directory ({e})") from None
    if run.manifest.get("command") != "patch" or run.manifest.get("status") != "finished":
        raise SpecError(f"--patch-run {spec.patch_run}: not a finished ivlens patch run (it is a "
                        f"{run.manifest.get('status')} {run.manifest.get('command')} run)")
    rows = run.read_table("patch")
    want = {"task": task, "subtask": subtask, "target": spec.target, "fmt": spec.format, "mode": "transfer"}
    have = {k: str(rows[k].iloc[0]) for k in want if k in rows and not rows.empty}
    wrong = [f"{k} {have.get(k)!r} (steering: {v!r})" for k, v in want.items() if have.get(k, v) != v]
    if wrong:
        raise SpecError(f"--patch-run {spec.patch_run}: patched another setting: {'; '.join(wrong)}")
    return rows


def run_steer(spec: SteerSpec, *, models: Sequence[LoadedModel] | None = None, out: str | Path | None = None,
              resume: str | Path | None = None, progress: Callable[[int, int], None] | None = None,
              root: str | Path | None = None) -> SteerRunResult:
    """Steer every model with ``spec.vectors`` × ``spec.alphas`` × ``spec.layers`` × ``spec.positions`` on the
    selected samples' query-only prompts (unit files of ``spec.chunk_size`` samples, resumable), then the
    dose-response table and figure; with ``spec.patch_run`` (read from ``root`` when relative, a study's
    directory), the comparison with that patch run (``steer_vs_patch``). With ``spec.shard``, only that share of the
    chunks, then stop (:func:`stop_shard`; ``dose`` is empty)."""
    from .budget import parse_bytes
    from .probing.collect import parse_layers
    from .steering.analysis import compare_with_patching, dose_response
    from .steering.figures import plot_dose_response
    from .steering.plan import SteerPlan, parse_steer_positions
    from .steering.sweep import steer_sweep
    from .steering.vectors import check_run_vectors, parse_alphas, parse_vectors
    from .tasks import require_contrastive

    check_run_target(spec, out, resume)  # before any model loads
    if spec.memory_budget is not None and spec.memory_budget.strip().lower() != "auto":
        parse_bytes(spec.memory_budget)
    t = load_task(spec.task)
    subtask = t.subtask(spec.subtask or t.subtask_names[0]).name
    vectors = parse_vectors(spec.vectors)
    if any(v != "mean" for v in vectors):
        require_contrastive(t, analysis="--vectors diff, probe: and means:")
    other = t.other(subtask) if t.is_contrastive else None
    lms = load_spec_models(spec.models, spec, models)
    plans = []
    for lm in lms:  # fail on bad specs before a run directory is made
        plans.append(SteerPlan(vectors, parse_alphas(spec.alphas), tuple(parse_layers(spec.layers, lm.n_layers)),
                               parse_steer_positions(spec.positions)))
        check_run_vectors(vectors, lm.name, lm.d_model, plans[-1].layers, subtask, other)
        selection.sample_indices(t, spec.samples, spec.seed,
                                 selection.split_queries(lm.path, lm.name, t, spec.split))
    if len({p.layers for p in plans}) > 1:
        raise SpecError("--model: the models have different numbers of layers; steer them in separate runs")
    patch_rows = patch_rows_to_compare(spec, t.name, subtask, root) if spec.patch_run is not None else None
    run = start_run(spec, f"{t.name}-{subtask}", out=out, resume=resume, models=lms, task=t.name)
    with torch_threads(spec.threads):
        res = steer_sweep(lms, [lm.name for lm in lms], t, subtask, plans[0], run, samples=spec.samples,
                          split=spec.split, target=spec.target, fmt=spec.format, seed=spec.seed,
                          chunk_size=spec.chunk_size, batch_size=spec.batch_size, memory_budget=spec.memory_budget,
                          max_per_subtask=spec.max_per_subtask, progress=progress, owns=owner(spec.shard))
    if spec.shard is not None:
        stop_shard(run, spec)
        return SteerRunResult(run, res, pd.DataFrame())
    dose = dose_response(res.rows)
    run.write_table("dose_response", dose)
    run.write_table("vectors", res.vectors)
    versus = compare_with_patching(res.rows, patch_rows) if patch_rows is not None else None
    if versus is not None and not versus.empty:  # empty: no query in common (warned, with the model's name)
        run.write_table("steer_vs_patch", versus)
    if spec.figures:
        plot_dose_response(dose, run.figure_path("dose_response.png").parent)
    run.finish(engine={k: v.to_dict() for k, v in res.stats.items()}, n_rows=len(res.rows),
               plan=plans[0].to_dict())
    return SteerRunResult(run, res, dose)


# --------------------------------------------------------------------------------------------- probe
def config_layer_count(name: str, spec: Spec) -> int | None:
    """The number of decoder layers of model ``name`` from its config alone (no weights loaded); ``None`` when
    the config cannot be read here (loading the model then reports why)."""
    from .estimate.flops import ModelShape
    from .estimate.model import read_config
    from .models.load import header_source, resolve_name

    try:
        path, gguf = header_source(*resolve_name(name, getattr(spec, "gguf_file", None)))
        config = read_config(path, gguf, getattr(spec, "revision", None), getattr(spec, "trust_remote_code", False))
        return ModelShape.from_config(config).n_layers
    except (OSError, ValueError, TypeError):
        return None


def run_probe(spec: ProbeSpec, *, models: Sequence[LoadedModel] | None = None, out: str | Path | None = None,
              resume: str | Path | None = None):
    """Collect the IVs of ``spec.tasks`` ' instructions in every model (streamed, resumable) and probe, project
    and compare them layer by layer. Returns :class:`ivlens.probing.run.ProbeResult`."""
    from .probing.collect import parse_layers
    from .probing.probes import ProbeConfig
    from .probing.run import ProbeResult, probe_run
    from .tasks.requirements import require_rephrasings

    check_run_target(spec, out, resume)  # before any model loads
    if spec.varying == "instructions":
        require_rephrasings(list(spec.tasks), n=2, analysis="probing")  # before any model is loaded
    for task in spec.tasks:
        load_task(task)
    if spec.remote and models is None:  # NDIF: refused here (key, hub ids) before any run directory is made
        models = load_spec_models(spec.models, spec, None)
    names = [m.name for m in models] if models is not None else list(spec.models)
    if models is None:  # the models load one at a time, after the run directory is made: check their files now
        for name in names:
            check_model_files(name, gguf_file=spec.gguf_file, trust_remote_code=spec.trust_remote_code)
    if spec.layers is not None and spec.layers.strip().lower() != "all":  # refuse bad layers before any work
        for m in models if models is not None else spec.models:
            n_layers = m.n_layers if isinstance(m, LoadedModel) else config_layer_count(m, spec)
            if n_layers is not None:
                parse_layers(spec.layers, n_layers)
    run = start_run(spec, "+".join(slug(n) for n in names)[:60], out=out, resume=resume,
                    task=",".join(spec.tasks))
    res = probe_run(list(models) if models is not None else list(spec.models), list(spec.tasks),
                    layers=spec.layers, varying=spec.varying, run=run, user_instructions=dict(spec.instructions), fmt=spec.format,
                    batch_size=spec.batch_size, cfg=ProbeConfig(folds=spec.folds, seed=spec.seed),
                    figure_at=list(spec.figure_layers) if spec.figure_layers is not None else None,
                    max_per_subtask=spec.max_per_subtask, memory_budget=spec.memory_budget,
                    load_kwargs=spec.load_kwargs(), resume=resume is not None, shard=spec.shard,
                    figures=spec.figures)
    if spec.shard is not None:
        stop_shard(run, spec)
        return ProbeResult(run, pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    return res


# --------------------------------------------------------------------------------------------- trace
@dataclass
class TraceRunResult:
    """What :func:`run_trace` produced: ``summaries`` (``--compare``: model → summary) or ``traces`` (one
    :class:`ivlens.tracing.run.SingleTrace` per model)."""

    run: RunDir
    summaries: dict[str, dict] | None = None
    traces: list | None = None


def compare_base(spec: TraceSpec, lms: Sequence[LoadedModel]) -> str | None:
    """The name of the base model of a ``--compare`` run: the model ``spec.base`` names (a ``--model`` value or a
    loaded model's name, e.g. a study's label), else the model named ``base``, else ``None``. Raises
    :class:`SpecError` when ``--base`` names none of the models."""
    names = [lm.name for lm in lms]
    if spec.base is None:
        return "base" if "base" in names else None
    for given, lm in zip(spec.models, lms, strict=True):
        if spec.base in (given, lm.name):
            return lm.name
    raise SpecError(f"--base {spec.base!r} is not one of the models ({', '.join(dict.fromkeys([*spec.models, *names]))}); "
                    "name one of them")


def run_trace(spec: TraceSpec, *, models: Sequence[LoadedModel] | None = None, out: str | Path | None = None,
              resume: str | Path | None = None, progress: Callable | None = None,
              root: str | Path | None = None) -> TraceRunResult:
    """Trace one prompt per model, or (``spec.compare``) compare the two subtasks' graphs over the selected
    samples (one resumable part per model × sample). With ``spec.readout``, trace that direction at its layer
    and ``spec.position`` (:mod:`ivlens.tracing.readout`; resolved for every model before the run directory is
    made) and write ``readout_components.parquet``; ``root``: where a relative ``RUN_DIR`` of the read-out is read
    from (a study's directory), default the working directory."""
    from .tracing.run import check_trace_memory, compare_run, plan_readout, trace_single

    check_run_target(spec, out, resume)  # before any model loads
    if spec.task is not None:
        t = load_task(spec.task)
        if spec.subtask is not None:
            t.subtask(spec.subtask)
        if spec.sample is not None and spec.sample >= len(t.samples):
            raise TaskError(f"--sample {spec.sample} is out of range: task {t.name!r} has samples "
                            f"0..{len(t.samples) - 1}")
        if spec.compare and not t.is_contrastive:
            raise TaskError(f"--compare needs a task with two subtasks; {t.name!r} has {len(t.subtasks)}")
    lms = load_spec_models(spec.models, spec, models)
    for lm in lms:  # say what the graph costs before building it; refuse when it will not fit
        check_trace_memory(lm, task=spec.task, subtask=spec.subtask, sample=spec.sample, prompt=spec.prompt,
                           compare=spec.compare, samples=spec.samples, seed=spec.seed, fmt=spec.format,
                           beam=spec.beam, max_tokens=spec.max_tokens, dtype=spec.dtype, device=spec.device,
                           memory_budget=spec.memory_budget)
    plans = [None] * len(lms)
    if spec.readout is not None:  # every read-out problem is reported before a run directory exists
        plans = [plan_readout(lm, readout=spec.readout, position=spec.position, task=spec.task, subtask=spec.subtask,
                              sample=spec.sample, prompt=spec.prompt, fmt=spec.format, max_tokens=spec.max_tokens,
                              base=Path(root) if root is not None else None) for lm in lms]
    base = compare_base(spec, lms) if spec.compare else None
    name = spec.task or "prompt"
    run = start_run(spec, f"{name}-compare" if spec.compare else name, out=out, resume=resume, models=lms,
                    task=spec.task)
    if spec.compare:
        summaries = compare_run(lms, spec.task, run, samples=spec.samples, split=spec.split, seed=spec.seed,
                                fmt=spec.format, top_k=spec.top_k, beam=spec.beam, progress=progress,
                                owns=owner(spec.shard) if spec.shard is not None else None, base=base,
                                alpha=spec.alpha, correction=spec.correction, figures=spec.figures)
        if spec.shard is not None:
            stop_shard(run, spec)
            return TraceRunResult(run, summaries={})
        run.finish(summary=summaries)
        return TraceRunResult(run, summaries=summaries)
    target: str | int | None = spec.target
    traces = [trace_single(lm, run, task=spec.task, subtask=spec.subtask, sample=spec.sample, prompt=spec.prompt,
                           target=target, method=spec.method, top_k=spec.top_k, beam=spec.beam,
                           threshold_rank=spec.threshold_rank, start_pos=spec.start_pos, end_pos=spec.end_pos,
                           from_inst=spec.from_inst, fmt=spec.format, max_tokens=spec.max_tokens, readout=plan,
                           figures=spec.figures)
              for lm, plan in zip(lms, plans, strict=True)]
    if spec.readout is not None:
        from .tracing.components import component_rows

        run.write_table("readout_components", pd.DataFrame(
            [{"model": tr.model, "task": spec.task, "subtask": tr.readout.get("subtask"), "readout_layer":
              tr.readout["layer"], "pos": tr.readout["pos"], **r} for tr in traces
             for r in component_rows(tr.result.full_graph)]))
        run.finish(readout={tr.model: {k: tr.readout[k] for k in ("name", "layer", "pos", "value", "real",
                                                                   "completeness_rel_err")} for tr in traces})
        return TraceRunResult(run, traces=traces)
    run.finish()
    return TraceRunResult(run, traces=traces)


# --------------------------------------------------------------------------------------------- organism
def run_organism(spec: OrganismSpec, *, out: str | Path | None = None, progress: bool = True,
                 run_dir: str | Path | None = None) -> Path:
    """Build (or reuse, unless ``spec.force``) the model organism; its build directory is its run directory
    (``card.json`` records the spec and its hash). With ``run_dir``, also write a run directory there holding the
    card and its IV-transfer table, so that a study's report reads the organism like any other run. Returns the
    build directory."""
    import json

    from .organism.build import build_organism
    from .organism.card import CARD_NAME, read_card, write_card_run
    from .runs import atomic_write_text

    check_out_dir(out)
    check_out_dir(run_dir)
    directory = build_organism(out=Path(out) if out is not None else None, seed=spec.seed, size=spec.size,
                               variant=spec.variant, force=spec.force, measure=spec.measure, progress=progress,
                               threads=spec.threads)
    card = read_card(directory)
    if card.get("spec_hash") != spec.hash():
        card.update(spec=spec.model_dump(mode="json"), spec_hash=spec.hash())
        atomic_write_text(Path(directory) / CARD_NAME, json.dumps(card, indent=2) + "\n")
    if run_dir is not None:
        dump = spec.model_dump(mode="json")
        run = RunDir.create("organism", spec.variant, out=run_dir, args={**dump, "path": str(directory)},
                            seed=spec.seed, spec=dump, spec_hash=spec.hash())
        write_card_run(run, card)
        run.finish()
    return directory
