"""Run a study's steps side by side in worker processes on this machine (``ivlens run --jobs N``).

Small models use a CPU core badly: on the main job's organisms (6 layers, d_model 192) a step on two torch threads
is only about 6 % faster than on one, because most of a step's time is Python between small matrix products. Two
steps at a time on one thread each use both cores. :class:`ProcessExecutor` runs up to ``jobs`` steps at once, each
in a worker process with ``cores // jobs`` torch threads (:func:`worker_threads`), and starts a step only after the
steps it depends on (:attr:`ivlens.study.plan.Step.depends_on`).

The workers are forked by a fork server (:func:`worker_context`), never by the study's process, which may already
run OpenMP threads (a fork of it could hang in the child). The server imports what a worker needs once
(:data:`PRELOAD`: torch, transformers, the analyses, the report; about 6.5 s of CPU here) and forks each worker
from that state, so a worker costs a fork, not an import of its own: two workers cost one import instead of two,
and every later pool of the same process (the test-suite's) none. A step run here first (the organism build)
starts the server once its start note is printed, so the server imports while the organisms are being built, and
not while the note's estimate times a training step on the build's threads; otherwise the first step sent to a
worker starts it. A worker takes the study process's environment
variables as they are when the pool starts (the server's are those of its own start). Where the platform has no
fork server (Windows), the workers are spawned, each importing for itself.

- A step that every other step still to run depends on (the organism build) runs here, alone, with this
  process's threads: the organisms it builds do not depend on ``--jobs``.
- Each worker keeps the models it loaded while a step still to run needs them, like :class:`LocalExecutor`.
- A step's automatic memory budget is this machine's divided by ``jobs``, so steps side by side stay within it.
- Results do not depend on which worker runs a step or when; a step's thread count is fixed by ``jobs`` alone.
- Log records of the workers are handled by this process's handlers (one console, one format).
- A worker ends the moment the study's process ends (Linux; :func:`_die_with_parent`), so a study killed and rerun
  resumes from what its steps wrote.
- A worker that no step can use while steps still run computes the caller's idle tasks, each once the steps it
  waits for are done: a study draws its report's sections there (:func:`ivlens.study.runner.sections_ahead`).
- The first step that fails stops the study: steps running finish, no new step starts, and the error is raised
  here (the study resumes from the finished steps).

:func:`auto_jobs` chooses ``jobs`` for ``--jobs auto``: the cores, fewer when the models of the study would not
fit in memory once per worker, 1 on a GPU or when a model's config cannot be read.
"""

from __future__ import annotations

import gc
import logging
import logging.handlers
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack

from ivlens.budget import usable_cores
from ivlens.errors import IvlensError
from ivlens.models.load import LoadedModel
from ivlens.scoped import libraries_quiet

from .executors import (
    LocalExecutor,
    Work,
    execute_step,
    in_dependency_order,
    load_labelled,
    model_key,
    waits_for,
)
from .plan import Step
from .spec import StudySpec

log = logging.getLogger(__name__)

#: modules the fork server imports once for every worker it forks (:func:`worker_context`): the analyses' code
#: (torch, transformers, the engine) and the report's sections (matplotlib), which workers draw
PRELOAD = ["ivlens.api", "ivlens.report"]
#: bytes a worker needs besides its models' weights: Python, torch, transformers, activations of a small batch
WORKER_BASE_BYTES = 1 << 30
#: a worker's models take about this many times their weights at peak (weights, activations, caches, tables)
WEIGHT_OVERHEAD = 2.0


def worker_threads(jobs: int, cores: int | None = None, threads: int | None = None) -> int:
    """Torch threads of each of ``jobs`` workers: the cores shared out, at least one, and no more than this
    process's own (``threads``, default ``torch.get_num_threads()``: ``OMP_NUM_THREADS=1`` keeps one)."""
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return max(1, min(threads, (cores or usable_cores()) // max(1, jobs)))


def is_barrier(w: Work, others: Sequence[Work]) -> bool:
    """Whether every step of ``others`` (the steps still to run, ``w`` excluded) depends on ``w``: nothing can
    run beside it, so it runs alone. The last step left is no barrier: it runs in a worker like the others, at
    once and on a worker's threads (its results then do not depend on its being last)."""
    rest = [o for o in others if o is not w]
    return bool(rest) and all(w.step.rel in o.step.depends_on for o in rest)


def auto_jobs(study: StudySpec, steps: Sequence[Step], cores: int | None = None,
              available: int | None = None) -> int:
    """``--jobs auto``: steps at a time on this machine. 1 on a GPU (one device, one step) or with one step to
    run beside another; else the usable cores, fewer when each worker's copy of the study's models
    (:data:`WEIGHT_OVERHEAD` × their weights + :data:`WORKER_BASE_BYTES`) would not fit in ``available`` bytes
    (default: the available RAM). The weights are sized from the models' configs (no weights are read)."""
    cores = cores or usable_cores()
    parallel = sum(1 for s in steps if s.labels)  # steps with models; the organism build runs alone
    if study.device != "cpu" or cores < 2 or parallel < 2:
        return 1
    from ivlens.budget import available_bytes
    from ivlens.estimate.costs import DTYPE_BYTES

    from .dry_run import model_sizes

    try:
        weights = sum(n * DTYPE_BYTES[study.dtype] for n in model_sizes(study, steps))
    except IvlensError:  # a model its config cannot size: one step at a time, and its first step names the fault
        return 1
    per_worker = WORKER_BASE_BYTES + int(WEIGHT_OVERHEAD * weights)
    fit = (available if available is not None else available_bytes("cpu")) // per_worker
    return int(max(1, min(cores, parallel, fit)))


def worker_context() -> multiprocessing.context.BaseContext:
    """How workers start: forked by the ``forkserver`` with :data:`PRELOAD` imported (see the module docstring),
    or ``spawn`` where the platform has no fork server. Not ``fork``: the study's process may already run OpenMP
    threads (the organism build runs in it)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # read when the server starts; a running server keeps its own
    return context


# --- the worker side ------------------------------------------------------------------------------------------

_loaded: dict[str, LoadedModel] = {}
_jobs = 1
_worker_scope = ExitStack()  # settings held for the worker's life (it ends with the process)


def _die_with_parent(parent: int) -> None:
    """End this worker the moment the study's process (``parent``) ends, also by SIGKILL, so that a killed study
    leaves no worker writing into a step that its rerun resumes. Linux: a thread waits on a file descriptor of the
    study's process (``os.pidfd_open``) and ends this one when it becomes readable. Not the kernel's parent-death
    signal: a worker's parent is the fork server, which outlives a killed study by the seconds that its
    interpreter takes to shut down (the killed study's last step went on writing meanwhile); that signal remains
    where a kernel has no pidfd (before Linux 5.3), for a spawned worker, whose parent is the study's process."""
    if not sys.platform.startswith("linux"):
        return
    try:
        watched = os.pidfd_open(parent)
    except ProcessLookupError:  # it ended before this worker got here
        os._exit(1)
    except OSError:  # no pidfd on this kernel
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # it ended before the line above
            os._exit(1)
        return
    import select
    import threading

    def end_with_it() -> None:
        select.select([watched], [], [])  # readable once the study's process has ended
        os._exit(1)

    threading.Thread(target=end_with_it, name="ivlens-end-with-study", daemon=True).start()


def _init_worker(threads: int, jobs: int, log_queue, level: int, parent: int, quiet: bool,
                 environ: dict[str, str]) -> None:
    """Runs once in each worker: the study process's environment variables (a forked worker has the fork server's,
    from when it started), its torch threads, its log records sent to the study's process, and (``quiet``)
    third-party chatter off for the worker's life, as in the study's process (:func:`ivlens.scoped.quiet_libraries`):
    a new worker starts with the libraries' defaults, which would forward e.g. transformers' load report."""
    global _jobs
    import torch

    _die_with_parent(parent)
    if dict(os.environ) != environ:
        os.environ.clear()
        os.environ.update(environ)

    torch.set_num_threads(threads)
    _jobs = jobs
    root = logging.getLogger()
    root.handlers = [logging.handlers.QueueHandler(log_queue)]
    root.setLevel(level)
    if quiet:
        from ivlens.scoped import quiet_libraries

        _worker_scope.enter_context(quiet_libraries())


def _budget_share(step: Step) -> Step:
    """``step`` with an automatic memory budget replaced by this machine's divided among the workers."""
    spec = step.spec
    if "memory_budget" not in type(spec).model_fields or spec.memory_budget not in (None, "auto"):
        return step
    from dataclasses import replace

    from ivlens.budget import resolve_memory_budget

    share = resolve_memory_budget(None, spec.load_kwargs()["device"]) // _jobs
    return replace(step, spec=spec.model_copy(update={"memory_budget": str(share)}))


def run_in_worker(w: Work, keep: frozenset[str]) -> float:
    """Run step ``w`` in this worker with its models, loading those not loaded yet and first dropping the loaded
    ones that no step still to run needs (``keep``: their :func:`model_key`); return its seconds."""
    t0 = time.perf_counter()
    keys = [model_key(w.step, i) for i in range(len(w.step.labels))]
    for k in [k for k in _loaded if k not in keep and k not in keys]:
        del _loaded[k]
    gc.collect()
    for i, k in enumerate(keys):
        if k not in _loaded:
            _loaded[k] = load_labelled(w.step, i)
    execute_step(Work(_budget_share(w.step), w.directory, w.resume), [_loaded[k] for k in keys] or None)
    return time.perf_counter() - t0


# --- the study side -------------------------------------------------------------------------------------------

def dependents(work: Sequence[Work]) -> dict[str, int]:
    """For each step of ``work``: how many steps of ``work`` wait for it, directly or through others."""
    direct: dict[str, set[str]] = {w.step.rel: set() for w in work}
    for w in work:
        for d in w.step.depends_on:
            if d in direct:
                direct[d].add(w.step.rel)

    def below(rel: str, seen: set[str]) -> set[str]:
        for r in direct[rel] - seen:
            seen.add(r)
            below(r, seen)
        return seen

    return {rel: len(below(rel, set())) for rel in direct}


class ProcessExecutor:
    """Run the steps in ``jobs`` worker processes, each step after its dependencies (see the module docstring).
    Of the steps ready to start, those that more steps wait for start first (a chain's head before a step that ends
    nothing), then in the plan's order. After :meth:`run` the workers stay up for :meth:`map` (the study's report
    draws its sections there) until :meth:`close`."""

    def __init__(self, jobs: int, threads: int | None = None) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, not {jobs}")
        self.jobs = jobs
        self.threads = threads or worker_threads(jobs)
        self._pool: ProcessPoolExecutor | None = None
        self._listener: logging.handlers.QueueListener | None = None

    def describe(self) -> str:
        return (f"running {self.jobs} steps at a time, {self.threads} torch thread{'s' if self.threads > 1 else ''} "
                "each (--jobs)")

    def _start_server(self) -> None:
        """Start the fork server now, if the workers come from one (:func:`worker_context`): it imports
        :data:`PRELOAD` while this process goes on (the organism build, run here), not when the first step waits."""
        if worker_context().get_start_method() == "forkserver":
            from multiprocessing import forkserver

            forkserver.ensure_running()

    def _workers(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = worker_context()
            log_queue = context.Queue()
            self._listener = logging.handlers.QueueListener(log_queue, *logging.getLogger().handlers,
                                                            respect_handler_level=True)
            self._listener.start()
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=context, initializer=_init_worker,
                                             initargs=(self.threads, self.jobs, log_queue,
                                                       logging.getLogger().level, os.getpid(),
                                                       libraries_quiet(), dict(os.environ)))
        return self._pool

    def close(self) -> None:
        """Stop the workers (the steps running finish first; steps not started are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._listener is not None:
            self._listener.stop()
            self._listener = None

    def map(self, fn: Callable, items: Sequence) -> list:
        """``[fn(item) for item in items]``, computed in the workers side by side (``fn`` and the items pickle)."""
        return list(self._workers().map(fn, items))

    def run(self, work: Sequence[Work], on_start: Callable[[Work], None],
            on_done: Callable[[Work, float], None],
            idle: Sequence[tuple[Callable[[], object], frozenset[str]]] = ()) -> dict[int, Future]:
        """Run ``work``; ``idle``: ``(task, after)`` pairs, each task (a pickling callable of no argument) to
        compute in a worker that no step can use while steps still run, once the steps ``after`` (their ``rel``)
        are done: a study draws its report's sections there while its last steps run. Returns the futures of the
        idle tasks started, by index into ``idle`` (some may still run); a task not started before the last step
        ended is left to the caller."""
        pending = in_dependency_order(work)
        rank = dependents(pending)
        unfinished = {w.step.rel for w in pending}
        running: dict[Future, Work] = {}
        waiting = dict(enumerate(idle))  # idle tasks not started yet
        side: set[Future] = set()  # idle tasks running
        started: dict[int, Future] = {}
        try:
            while pending or running:
                ready = sorted((w for w in pending if not waits_for(w, unfinished)),
                               key=lambda w: -rank[w.step.rel])  # stable: the plan's order among equals
                for w in ready:
                    if is_barrier(w, pending):
                        if running:
                            break  # it runs alone, here, after the steps running now (idle tasks go on)
                        pending.remove(w)

                        def start_here(w: Work) -> None:
                            on_start(w)  # its start note first: the organism build's estimate times training steps
                            if self._pool is None:
                                self._start_server()  # then the server imports while the step runs here

                        LocalExecutor().run([w], start_here, on_done)
                        unfinished.discard(w.step.rel)
                        break
                    if len(running) + len(side) >= self.jobs:
                        break
                    pending.remove(w)
                    keep = frozenset(model_key(p.step, i) for p in pending for i in range(len(p.step.labels)))
                    on_start(w)
                    running[self._workers().submit(run_in_worker, w, keep)] = w
                if (pending or running) and not any(not waits_for(w, unfinished) and not is_barrier(w, pending)
                                                    for w in pending):
                    for i, (task, after) in list(waiting.items()):  # the workers no step can use now
                        if len(running) + len(side) >= self.jobs:
                            break
                        if not after & unfinished:
                            del waiting[i]
                            started[i] = self._workers().submit(task)
                            side.add(started[i])
                if not running and not side:
                    continue
                done, _ = wait([*running, *side], return_when=FIRST_COMPLETED)
                side -= done
                for future in (f for f in done if f in running):
                    w = running.pop(future)
                    try:
                        seconds = future.result()  # a failed step raises here; the except below stops the rest
                    except BrokenProcessPool as e:
                        raise IvlensError(
                            f"{w.step.rel}: its worker process died (killed, or out of memory?); rerun the study "
                            "with --jobs 1 or a smaller memory budget: it resumes from the finished steps") from e
                    unfinished.discard(w.step.rel)
                    on_done(w, seconds)
        except BaseException:
            self.close()
            raise
        return started


def local_executor(study: StudySpec, jobs: str | int = "auto") -> LocalExecutor | ProcessExecutor:
    """The executor of ``ivlens run --executor local --jobs JOBS``: ``auto`` (:func:`auto_jobs`) or a whole number
    ≥ 1; one job runs the steps one after another in this process (:class:`LocalExecutor`). A bad value raises
    :class:`~ivlens.study.spec.StudyError` naming ``--jobs``."""
    from .plan import plan_steps
    from .runner import check_study_models
    from .spec import StudyError

    text = str(jobs).strip().lower()
    if text == "auto":
        check_study_models(study)  # sizing reads the models' configs: a bad file is named as a study names it
        n = auto_jobs(study, plan_steps(study))
    else:
        try:
            n = int(text)
        except ValueError:
            n = 0
        if n < 1:
            raise StudyError(f"--jobs: {jobs!r} is neither a whole number of steps at a time (1 or more) nor "
                             "'auto'; give e.g. --jobs 2")
    return LocalExecutor() if n == 1 else ProcessExecutor(n)
