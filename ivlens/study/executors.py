"""Executors: where a study's steps run. :class:`LocalExecutor` runs them one after another in this process;
:class:`ivlens.study.ray_executor.RayExecutor` hands them to Ray. Both run each step through
:func:`execute_step`, the one place a step becomes a ``run_<analysis>(spec)`` call, and both start a step only
after the steps it depends on (:attr:`ivlens.study.plan.Step.depends_on`, :func:`waits_for`)."""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ivlens.errors import IvlensError
from ivlens.models.load import LoadedModel

from .plan import Step

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Work:
    """A step to run into ``directory``; ``resume``: the directory holds its unfinished run."""

    step: Step
    directory: Path
    resume: bool = False


class Executor(Protocol):
    def run(self, work: Sequence[Work], on_start: Callable[[Work], None],
            on_done: Callable[[Work, float], None]) -> None:
        """Run every step of ``work``, each after the steps of ``work`` it depends on; call ``on_start(work)``
        as each starts and ``on_done(work, seconds)`` as each finishes."""


def waits_for(w: Work, unfinished: set[str]) -> set[str]:
    """The steps (``rel``) that ``w`` depends on and that are still to run; a dependency that is not in the work
    (done before) is met."""
    return set(w.step.depends_on) & unfinished


def in_dependency_order(work: Sequence[Work]) -> list[Work]:
    """``work`` with every step after the steps it depends on, otherwise in the given order (the plan's order
    already is one, and is kept). Raises :class:`IvlensError` naming the steps when their dependencies form a
    cycle."""
    left, out = list(work), []
    unfinished = {w.step.rel for w in work}
    while left:
        ready = next((w for w in left if not waits_for(w, unfinished)), None)
        if ready is None:
            raise IvlensError("steps that depend on each other in a cycle: " + "; ".join(
                f"{w.step.rel} waits for {', '.join(sorted(waits_for(w, unfinished)))}" for w in left))
        left.remove(ready)
        unfinished.discard(ready.step.rel)
        out.append(ready)
    return out


def model_key(step: Step, i: int) -> str:
    """What identifies the ``i``-th loaded model of a step: the model, its label and how it is loaded."""
    return json.dumps([step.spec.models[i], step.labels[i], step.spec.load_kwargs()], sort_keys=True)


def load_labelled(step: Step, i: int) -> LoadedModel:
    """Load the ``i``-th model of ``step`` and give it its study label (the name its tables show)."""
    from ivlens.models.load import load_model

    lm = load_model(step.spec.models[i], **step.spec.load_kwargs())
    lm.name = step.labels[i]
    return lm


def study_directory(work: Work) -> Path:
    """The study directory of a step (its directory is ``<study>/<step.rel>``)."""
    return work.directory.parents[len(Path(work.step.rel).parts) - 1]


def execute_step(work: Work, models: Sequence[LoadedModel] | None = None, shard: str | None = None,
                 root: Path | None = None) -> Path:
    """Run one step: ``run_<analysis>(spec)`` into its directory, or resume the unfinished run there.
    ``models``: the step's models, loaded and labelled (else each is loaded by :func:`load_labelled`);
    ``shard``: ``"i/n"``, compute only that share of the step's units of work (see :mod:`ivlens.sharding`);
    ``root``: the study directory (default: :func:`study_directory` of ``work``; a shard's directory lies
    elsewhere, so a shard passes its step's)."""
    from ivlens.analyses import run_spec

    step = work.step
    spec = step.spec if shard is None else step.spec.model_copy(update={"shard": shard})
    if models is None and step.labels:
        models = [load_labelled(step, i) for i in range(len(step.labels))]
    # the study directory: a trace read-out's relative RUN_DIR and a steer step's patch run are steps of the study
    root = study_directory(work) if root is None else root
    if work.resume:
        return run_spec(spec, models=models, resume=work.directory, root=root)
    return run_spec(spec, models=models, out=work.directory, root=root)


class LocalExecutor:
    """Run the steps here, one after another, each after its dependencies (:func:`in_dependency_order`). Each
    model is loaded once, kept while a later step needs it and released after its last step (the main job's three
    organisms are loaded once for every analysis)."""

    def run(self, work: Sequence[Work], on_start: Callable[[Work], None],
            on_done: Callable[[Work, float], None]) -> None:
        import time

        work = in_dependency_order(work)
        last_use: dict[str, int] = {}
        for n, w in enumerate(work):
            for i in range(len(w.step.labels)):
                last_use[model_key(w.step, i)] = n
        loaded: dict[str, LoadedModel] = {}
        for n, w in enumerate(work):
            on_start(w)
            t0 = time.perf_counter()
            models = None
            if w.step.labels:
                keys = [model_key(w.step, i) for i in range(len(w.step.labels))]
                for i, k in enumerate(keys):
                    if k not in loaded:
                        loaded[k] = load_labelled(w.step, i)
                models = [loaded[k] for k in keys]
            execute_step(w, models)
            for k in [k for k in loaded if last_use[k] <= n]:
                del loaded[k]
            del models
            gc.collect()
            on_done(w, time.perf_counter() - t0)
