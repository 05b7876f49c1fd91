"""Run a study's steps as Ray tasks: every unit of work (a step's models × task × analysis × one shard of its
samples) is one task that declares its resources, on a local Ray instance or a cluster (``--ray-address``).

A step becomes ``shards`` tasks, each running the step's spec with ``shard=i/n`` (:mod:`ivlens.sharding`) into
``<study>/.shards/<step>/<i>``, then one task that merges them into the step's directory
(:func:`ivlens.merge.merge_runs`): the step's run directory is the one an unsharded local run writes, table for
table. A step whose spec cannot be sharded (:attr:`ivlens.specs.Spec.shardable`: the organism build, a trace of
one prompt) or that an earlier local run left unfinished runs whole, as one task. A step is submitted only when the
steps it depends on are finished, merges included (:attr:`ivlens.study.plan.Step.depends_on`: the organism build
before everything, a probe step before the trace read-outs of its direction); the others run side by side.
Finished shards are kept until their merge, so a killed study resumes shard by shard.

Ray is optional (``pip install 'ivlens[ray]'``); it is imported only here.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ivlens.errors import IvlensError

from .executors import Work, execute_step, in_dependency_order, load_labelled, study_directory, waits_for

log = logging.getLogger(__name__)

SHARDS_DIR = ".shards"  # hidden: the report never reads a shard


def shard_task(work: Work, shard: str, directory: str) -> str:
    """One unit of work: the step's share ``shard`` into ``directory`` (resumed when it holds an unfinished
    run of that shard). Runs in a Ray worker."""
    d = Path(directory)
    return str(execute_step(Work(work.step, d, resume=(d / "manifest.json").is_file()), shard=shard,
                            root=study_directory(work)))


def merge_task(work: Work, shards: list[str]) -> str:
    """Merge a step's shards into its directory with its labelled models, then drop the shards. Runs in a Ray
    worker."""
    from ivlens.merge import merge_runs

    models = [load_labelled(work.step, i) for i in range(len(work.step.labels))]
    path = merge_runs(shards, work.directory, models=models or None, root=study_directory(work))
    shutil.rmtree(Path(shards[0]).parent, ignore_errors=True)
    return str(path)


def step_task(work: Work) -> str:
    """A step that is not split (:meth:`RayExecutor.runs_whole`). Runs in a Ray worker."""
    return str(execute_step(work))


def _import_ray():
    try:
        import ray
    except ImportError:
        raise IvlensError("--executor ray needs Ray: pip install 'ivlens[ray]'") from None
    return ray


class RayExecutor:
    """Hand the steps to Ray (see the module docstring). ``address``: a cluster to join (default: start a local
    instance with ``num_cpus`` CPUs); ``shards``: tasks per step."""

    def __init__(self, address: str | None = None, shards: int = 2, num_cpus: int | None = 2):
        if shards < 1:
            raise IvlensError(f"--shards {shards}: give at least 1")
        self.address, self.shards, self.num_cpus = address, shards, num_cpus

    def _init(self, ray) -> bool:
        if ray.is_initialized():
            return False
        if self.address is not None:
            ray.init(address=self.address, log_to_driver=False)
        else:  # a local instance: its workers import this ivlens (a checkout need not be installed)
            import ivlens

            ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": str(Path(ivlens.__file__).resolve().parents[1])}})
        return True

    @staticmethod
    def resources(work: Work) -> dict:
        """What one task of ``work`` asks Ray for: one CPU, and one GPU when the step runs on CUDA."""
        device = str(work.step.spec.load_kwargs()["device"]) if work.step.labels else "cpu"
        return {"num_cpus": 1, "num_gpus": 1 if device.startswith("cuda") else 0}

    @staticmethod
    def runs_whole(work: Work) -> bool:
        """Whether ``work`` runs as one task: its spec cannot be sharded, or its directory holds an unfinished run
        of an earlier local run (resumed as it is)."""
        return work.resume or not work.step.spec.shardable

    def run(self, work: Sequence[Work], on_start: Callable[[Work], None],
            on_done: Callable[[Work, float], None]) -> None:
        in_dependency_order(work)  # refuses a cycle before Ray starts
        ray = _import_ray()
        started_here = self._init(ray)
        try:
            self._run(ray, work, on_start, on_done)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, ray, work: Sequence[Work], on_start, on_done) -> None:
        shard_fn, merge_fn, step_fn = (ray.remote(f) for f in (shard_task, merge_task, step_task))
        waiting = list(work)
        unfinished = {w.step.rel for w in work}
        pending: dict = {}  # object ref → (kind, work)
        shard_dirs: dict[str, list[str]] = {}
        left: dict[str, int] = {}
        t0: dict[str, float] = {}

        def submit(w: Work) -> None:
            on_start(w)
            t0[w.step.rel] = time.perf_counter()
            if self.runs_whole(w):
                pending[step_fn.options(**self.resources(w)).remote(w)] = ("step", w)
                return
            root = study_directory(w) / SHARDS_DIR / w.step.rel
            shard_dirs[w.step.rel] = [str(root / str(i)) for i in range(self.shards)]
            left[w.step.rel] = self.shards
            for i, d in enumerate(shard_dirs[w.step.rel]):
                pending[shard_fn.options(**self.resources(w)).remote(w, f"{i}/{self.shards}", d)] = ("shard", w)

        def submit_ready() -> None:
            for w in [w for w in waiting if not waits_for(w, unfinished)]:
                waiting.remove(w)
                submit(w)

        submit_ready()
        while pending:
            [ready], _ = ray.wait(list(pending), num_returns=1)
            kind, w = pending.pop(ready)
            ray.get(ready)  # raises the task's error here
            if kind == "shard":
                left[w.step.rel] -= 1
                if left[w.step.rel] == 0:
                    pending[merge_fn.options(**self.resources(w)).remote(w, shard_dirs[w.step.rel])] = ("merge", w)
                continue
            unfinished.discard(w.step.rel)
            on_done(w, time.perf_counter() - t0[w.step.rel])
            submit_ready()
        if shard_dirs:  # every step merged: the shards' folder holds nothing left
            root = study_directory(work[0]) / SHARDS_DIR
            if not any(p.is_file() for p in root.rglob("*")):
                shutil.rmtree(root, ignore_errors=True)
