"""A study's steps: each one ``run_<analysis>(spec)`` call and the run directory it writes (pure: no I/O).

:func:`plan_steps` expands every analysis block of a :class:`~ivlens.study.spec.StudySpec` into steps, one per
task (the registry's ``per_task`` analyses: eval, patch, steer, trace) and per value of each swept option (a list
where the spec takes one value), in the registry's order (:data:`ivlens.analyses.ANALYSES`: organism, eval, patch,
probe, steer, trace). Each step's spec is built, and so validated, here: a bad option
is reported with the block it came from before anything runs.

Each step names the steps it reads (:attr:`Step.depends_on`): every step reads the organisms the organism step
builds, and a trace read-out ``probe:<probe step>:<layer>`` reads that probe step's run directory. The run order
puts a step after what it depends on; an executor that runs steps side by side starts one only when they are done.

Steps whose spec has a ``figures`` option (patch, steer) run with ``figures=False`` unless the block sets it: the
study's report draws the same figures again from the steps' tables (a result-neutral option: the spec hash is the
same either way).
"""

from __future__ import annotations

import itertools
import types
import typing
from dataclasses import dataclass, replace
from typing import Any

from ivlens.analyses import BY_NAME, SPECS
from ivlens.runs import content_hash, slug
from ivlens.specs import Spec, SpecError

from .spec import StudyError, StudySpec

#: Spec options a study block may not set, and what to do instead.
RESERVED = {"models": "give the study's models (models: {label: model})",
            "task": "give the block's tasks (tasks: [...]), a subset of the study's",
            "shard": "the executor shards steps (ivlens run --executor ray --shards N)"}


@dataclass(frozen=True)
class Step:
    """One run of one analysis: its spec, the labels its models take in the tables (in ``spec.models`` order),
    the run directory relative to the study directory, the configs a dry run sizes instead of each model, and the
    steps (their ``rel``) whose results it reads, which must be finished before it starts."""

    analysis: str
    spec: Spec
    rel: str
    labels: tuple[str, ...] = ()
    sizing: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()

    def key(self) -> str:
        """What makes two steps the same computation: the spec's hash and the models' labels."""
        return content_hash({"spec_hash": self.spec.hash(), "labels": list(self.labels)})


def _takes_many(annotation: Any) -> bool:
    """Whether a spec field itself holds several values (a tuple or mapping), so a list is its value, not a sweep."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_takes_many(a) for a in typing.get_args(annotation))
    return origin in (tuple, dict, list) or annotation in (tuple, dict, list)


def _sweeps(spec_cls: type[Spec], block: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list]]:
    fixed, swept = {}, {}
    for k, v in block.items():
        field = spec_cls.model_fields.get(k)
        if isinstance(v, list) and field is not None and not _takes_many(field.annotation):
            if not v:
                raise StudyError(f"{k}: an empty list sweeps nothing; give one value or several")
            swept[k] = v
        else:
            fixed[k] = v
    return fixed, swept


def plan_steps(study: StudySpec) -> list[Step]:
    """Every step of ``study``, validated, in run order. Raises :class:`StudyError` naming the block and option."""
    models = tuple(e.model for e in study.models.values())
    sizing = tuple(e.config or e.model for e in study.models.values())
    steps: list[Step] = []
    for analysis in sorted(study.analyses, key=lambda name: BY_NAME[name].order):  # the registry's run order
        spec_cls = SPECS[analysis]
        blocks = study.analyses[analysis]
        for bi, block in enumerate(blocks):
            where = f"analyses.{analysis}" + (f"[{bi}]" if len(blocks) > 1 else "")
            block = dict(block)
            for reserved, instead in RESERVED.items():
                if reserved in block:
                    raise StudyError(f"{where}.{reserved}: set by the study; {instead}")
            tasks = tuple(block.pop("tasks", study.tasks))
            if isinstance(tasks, str):
                tasks = (tasks,)
            unknown = [t for t in tasks if t not in study.tasks]
            if unknown and analysis != "organism":
                raise StudyError(f"{where}.tasks: {unknown} are not tasks of the study (its tasks: "
                                 f"{', '.join(study.tasks) or 'none'})")
            fixed, swept = _sweeps(spec_cls, block)
            base: dict[str, Any] = {}
            if analysis != "organism":
                if not models:
                    raise StudyError(f"{where}: the study names no models (models: {{label: model}})")
                base = {**study.load_options(), "models": models}
                if analysis == "probe":
                    base["tasks"] = tasks
            if "figures" in spec_cls.model_fields:  # the report draws these figures again from the step's tables
                base["figures"] = False
            for values in itertools.product(*swept.values()) if swept else [()]:
                options = {**base, **fixed, **dict(zip(swept, values, strict=True))}
                for task in (tasks if BY_NAME[analysis].per_task else [None]):
                    if task is not None:
                        options["task"] = task
                    try:
                        spec = spec_cls(**options)
                    except SpecError as e:
                        raise StudyError(f"{where}: {e}") from None
                    parts = ([task] if task is not None else []) + [slug(v) for v in values]
                    if len(blocks) > 1:
                        parts.insert(0, str(bi))
                    rel = f"{analysis}/{'-'.join(parts)}" if parts else analysis
                    labels = study.labels if analysis != "organism" else ()
                    steps.append(Step(analysis, spec, rel, labels, sizing if analysis != "organism" else ()))
    steps = _with_dependencies(steps)
    seen: dict[str, Step] = {}
    for s in steps:
        if s.rel in seen:
            raise StudyError(f"two steps would write {s.rel}: give the blocks of analyses.{s.analysis} different "
                             "tasks or options")
        seen[s.rel] = s
    return steps


def _readout_step(step: Step, probes: list[str]) -> tuple[str, ...]:
    """The probe step a trace read-out reads, ``()`` for none (a vector file, an absolute run directory).

    A relative ``RUN_DIR`` is read from the study directory, so it must be the run directory of one of the study's
    probe steps; else :class:`StudyError` naming them."""
    from pathlib import PurePath

    from ivlens.tracing.readout import parse_readout

    readout = getattr(step.spec, "readout", None)
    if readout is None:
        return ()
    src = parse_readout(readout)
    if src.kind == "vector" or PurePath(src.path).is_absolute():
        return ()
    rel = src.path.rstrip("/")
    if rel not in probes:
        raise StudyError(f"analyses.trace.readout: {readout!r} reads {src.path!r}, which is no probe step of this "
                         f"study (its probe steps write: {', '.join(probes) or 'none; add a probe block'})")
    return (rel,)


def _setting(spec: Spec) -> tuple:
    """What a steering and a patch run must share to be compared: task, subtask (default: the task's first),
    target and format."""
    from ivlens.tasks import load_task

    return spec.task, spec.subtask or load_task(spec.task).subtask_names[0], spec.target, spec.format


def _with_patch_run(step: Step, patches: list[Step]) -> Step:
    """A steer step compared with the study's transfer patch step of the same setting (its ``patch_run``), when
    there is one and the block names no other."""
    if step.analysis != "steer" or step.spec.patch_run is not None:
        return step
    mine = _setting(step.spec)
    for p in patches:
        if p.spec.mode == "transfer" and _setting(p.spec) == mine:
            return replace(step, spec=step.spec.model_copy(update={"patch_run": p.rel}))
    return step


def _with_dependencies(steps: list[Step]) -> list[Step]:
    """``steps`` with :attr:`Step.depends_on` set: the organism steps (every other step loads the organisms),
    for a trace read-out the probe step it reads, and for a steer step the patch step it is compared with."""
    organisms = tuple(s.rel for s in steps if s.analysis == "organism")
    probes = [s.rel for s in steps if s.analysis == "probe"]
    patches = [s for s in steps if s.analysis == "patch"]
    steps = [_with_patch_run(s, patches) for s in steps]
    return [replace(s, depends_on=(organisms if s.analysis != "organism" else ()) + _readout_step(s, probes)
                    + ((s.spec.patch_run,) if s.analysis == "steer" and s.spec.patch_run in {p.rel for p in patches}
                       else ())) for s in steps]
