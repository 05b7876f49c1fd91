"""A study's steps: each one ``run_<analysis>(spec)`` call and the run directory it writes (pure: no I/O).

:func:`plan_steps` expands every analysis block of a :class:`~ivlens.study.spec.StudySpec` into steps, one per
task (the registry's ``per_task`` analyses: eval, patch, steer, trace) and per value of each swept option (a list
where the spec takes one value), in the registry's order (:data:`ivlens.analyses.ANALYSES`: organism, eval, patch,
probe, steer, trace). Each step's spec is built, and so validated, here: a bad option
is reported with the block it came from before anything runs.

Each step names the steps it reads (:attr:`Step.depends_on`), as the registry says: every step reads the models
that a ``provides_models`` step makes (the organism build), and an analysis's ``link`` names the other steps its
step reads (a trace read-out ``probe:<probe step>:<layer>``: that probe step; a steer step: the transfer patch step
it is compared with). This module names no analysis. The run order puts a step after what it depends on; an
executor that runs steps side by side starts one only when they are done.

Steps whose spec has a ``figures`` option (patch, steer, probe, trace) run with ``figures=False`` unless the block
sets it: the study's report draws its figures from the steps' tables (a result-neutral option: the spec hash is the
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
from ivlens.specs import Spec, SpecError, StepRef

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
            entry = BY_NAME[analysis]
            unknown = [t for t in tasks if t not in study.tasks]
            if unknown and not entry.provides_models:
                raise StudyError(f"{where}.tasks: {unknown} are not tasks of the study (its tasks: "
                                 f"{', '.join(study.tasks) or 'none'})")
            fixed, swept = _sweeps(spec_cls, block)
            base: dict[str, Any] = {}
            if not entry.provides_models:
                if not models:
                    raise StudyError(f"{where}: the study names no models (models: {{label: model}})")
                base = {**study.load_options(), "models": models}
                if not entry.per_task and "tasks" in spec_cls.model_fields:  # one run on the block's tasks
                    base["tasks"] = tasks
            if "figures" in spec_cls.model_fields:  # the report draws these figures again from the step's tables
                base["figures"] = False
            for values in itertools.product(*swept.values()) if swept else [()]:
                options = {**base, **fixed, **dict(zip(swept, values, strict=True))}
                for task in (tasks if entry.per_task else [None]):
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
                    loads = not entry.provides_models
                    steps.append(Step(analysis, spec, rel, study.labels if loads else (), sizing if loads else ()))
    steps = _with_dependencies(steps)
    seen: dict[str, Step] = {}
    for s in steps:
        if s.rel in seen:
            raise StudyError(f"two steps would write {s.rel}: give the blocks of analyses.{s.analysis} different "
                             "tasks or options")
        seen[s.rel] = s
    return steps


def _with_dependencies(steps: list[Step]) -> list[Step]:
    """``steps`` with :attr:`Step.depends_on` set, from the registry: every step waits for the steps that make the
    models (:attr:`~ivlens.analyses.analysis.Analysis.provides_models`: the organism build), and a step whose
    analysis has a ``link`` gets its spec completed from, and waits for, the steps it reads (a steer step: the
    transfer patch step of its setting; a trace read-out: its probe step). Raises :class:`StudyError` naming the
    step for a spec that reads a run the study does not make."""
    providers = tuple(s.rel for s in steps if BY_NAME[s.analysis].provides_models)
    linked = []
    for s in steps:
        entry = BY_NAME[s.analysis]
        spec, reads = s.spec, ()
        if entry.link is not None:
            others = [StepRef(o.analysis, o.rel, o.spec) for o in steps if o.analysis in entry.depends_on]
            try:
                spec, reads = entry.link(s.spec, others)
            except SpecError as e:
                raise StudyError(f"analyses.{s.analysis} ({s.rel}): {e}") from None
        linked.append(replace(s, spec=spec, depends_on=(() if entry.provides_models else providers) + reads))
    return linked
