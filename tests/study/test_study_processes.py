"""``ivlens run --jobs N``: steps side by side in worker processes (:mod:`ivlens.study.process_executor`). The
scheduling rules and ``--jobs auto`` without processes; a tiny study run in two workers, equal table for table to
the same study run one step after another, with its report drawn in the workers; a step that fails in a worker
stops the study with its one-line error. Killing such a study and resuming it: ``tests/study/test_study.py``."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ivlens.cli import app
from ivlens.errors import IvlensError
from ivlens.study import (
    ProcessExecutor,
    StudyError,
    StudySpec,
    load_study,
    local_executor,
    plan_steps,
    run_study,
)
from ivlens.study.executors import LocalExecutor, Work
from ivlens.study.process_executor import auto_jobs, dependents, is_barrier, worker_threads

sys.path.insert(0, str(Path(__file__).parent))
from test_study import _same, _tables, tiny_study  # noqa: E402


def _main_job_like(dirs=("a", "b")) -> StudySpec:
    study = tiny_study(list(dirs))
    study["analyses"] = {"organism": {"variant": "gist"}, **study["analyses"],
                         "steer": {"tasks": ["adjectives"], "subtask": "adj_ant", "samples": 2},
                         }
    study["analyses"]["trace"] = [study["analyses"]["trace"],
                                  {"tasks": ["animals"], "readout": "probe:probe:1", "position": "t_inst",
                                   "sample": 0}]
    return StudySpec(**study)


@pytest.mark.unit
def test_steps_that_others_wait_for_start_first_and_the_organism_build_runs_alone():
    work = [Work(s, Path(s.rel)) for s in plan_steps(_main_job_like())]
    rank = dependents(work)
    # every step waits for the organisms; the steer step for its patch step; the read-out for the probe step
    assert rank["organism"] == len(work) - 1
    assert rank["patch/adjectives"] == 1 and rank["probe"] == 1 and rank["eval/adjectives-all"] == 0
    organism = next(w for w in work if w.step.rel == "organism")
    assert is_barrier(organism, work)
    assert not any(is_barrier(w, work) for w in work if w is not organism)
    # the last step left runs in a worker at once, not alone after the running steps (nothing waits for it)
    last = work[-1]
    assert not is_barrier(last, [last])
    assert is_barrier(organism, [organism, last])


@pytest.mark.unit
def test_the_fork_server_starts_after_the_organism_builds_start_note(monkeypatch):
    """The organism build runs in the study's process and first prints its estimate, which times training steps on
    the build's threads: the fork server, whose import takes seconds of CPU, starts after that note and before the
    build, not beside the note's timing (which it would slow, making the estimate long)."""
    from concurrent.futures import Future

    import ivlens.study.process_executor as process_executor

    events: list[str] = []

    class BuildHere:
        def run(self, work, on_start, on_done):
            for w in work:
                on_start(w)
                events.append(f"ran {w.step.rel} here")
                on_done(w, 0.0)

    class Pool:
        def submit(self, fn, w, keep):
            events.append(f"sent {w.step.rel} to a worker")
            done = Future()
            done.set_result(0.0)
            return done

    monkeypatch.setattr(process_executor, "LocalExecutor", BuildHere)
    executor = ProcessExecutor(2, threads=1)
    monkeypatch.setattr(executor, "_start_server", lambda: events.append("server started"))
    monkeypatch.setattr(executor, "_workers", lambda: Pool())
    work = [Work(s, Path(s.rel)) for s in plan_steps(_main_job_like())]
    executor.run(work, lambda w: events.append(f"note {w.step.rel}"), lambda w, seconds: None)
    assert events[:3] == ["note organism", "server started", "ran organism here"]
    assert events.count("server started") == 1
    assert sum(e.startswith("sent ") for e in events) == len(work) - 1


@pytest.mark.unit
def test_jobs_auto_uses_the_cores_unless_memory_or_a_gpu_says_otherwise(monkeypatch):
    import ivlens.study.dry_run as study_dry_run

    study = StudySpec(**tiny_study(["a", "b"]))
    steps = plan_steps(study)
    monkeypatch.setattr(study_dry_run, "model_sizes", lambda study, steps=None: [100_000_000, 100_000_000])
    gib = 1 << 30
    assert auto_jobs(study, steps, cores=2, available=20 * gib) == 2
    assert auto_jobs(study, steps, cores=8, available=20 * gib) == len(steps)  # no more workers than steps
    assert auto_jobs(study, steps, cores=1, available=20 * gib) == 1
    # each worker: 1 GiB + 2 × 800 MB of float32 weights ≈ 2.6 GB; 4 GB fits one
    assert auto_jobs(study, steps, cores=8, available=4 * gib) == 1
    assert auto_jobs(StudySpec(**{**tiny_study(["a", "b"]), "device": "cuda"}), steps, cores=8) == 1
    assert worker_threads(2, cores=2, threads=2) == 1 and worker_threads(2, cores=8, threads=8) == 4
    assert worker_threads(2, cores=8, threads=1) == 1  # OMP_NUM_THREADS=1 stays one thread per process


@pytest.mark.unit
@pytest.mark.parametrize("jobs", ["0", "two", "-1", "1.5"])
def test_a_bad_jobs_value_is_one_line_naming_the_option(jobs):
    study = StudySpec(**tiny_study(["a", "b"]))
    with pytest.raises(StudyError, match=r"^--jobs: .* neither a whole number of steps at a time .* give e\.g\. "
                                         r"--jobs 2$"):
        local_executor(study, jobs)
    assert isinstance(local_executor(study, "1"), LocalExecutor)
    chosen = local_executor(study, " 2 ")
    assert isinstance(chosen, ProcessExecutor) and chosen.jobs == 2


@pytest.mark.cli
def test_the_cli_refuses_a_bad_jobs_value_with_exit_2(tmp_path):
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump(tiny_study(["a", "b"])))
    r = CliRunner().invoke(app, ["run", str(study), "--jobs", "zero"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "--jobs: 'zero' is neither a whole number" in " ".join(r.output.split())


@pytest.mark.cli
def test_steps_side_by_side_equal_steps_one_after_another(tiny_study_run, tmp_path):
    """One torch thread in the workers as in the steps run one after another (shared: ``tiny_study_run``), so that
    the floats agree bit for bit; the report's sections are drawn in the workers too."""
    study = load_study(tiny_study_run / "tiny.yaml")
    one = {s["run"] for s in json.loads((tiny_study_run / "full" / "study.json").read_text())["steps"]
           if s["seconds"] is not None}  # the steps the uninterrupted run ran
    two = run_study(study, tmp_path / "two", executor=ProcessExecutor(2, threads=1))
    assert set(two.seconds) == one == {s.rel for s in plan_steps(study)}
    _same(_tables(tiny_study_run / "full"), _tables(tmp_path / "two"))
    page = two.report.read_text()
    for section in ("eval", "patching", "probing", "tracing"):
        assert f'<section id="{section}">' in page
    assert "could not be drawn" not in page
    # sections drawn in a worker while the last steps ran stand as the page drawn here, after them, would show
    from ivlens.report import read_study, render_report

    def unstamped(text: str) -> str:
        return re.sub(r"built \d{4}-\d\d-\d\d \d\d:\d\d", "built", text)

    assert unstamped(page) == unstamped(render_report(read_study(tmp_path / "two"), tmp_path / "two"))


@pytest.mark.cli
def test_a_step_that_fails_in_a_worker_stops_the_study_with_its_error(tmp_path):
    study = StudySpec(**{**tiny_study([str(tmp_path / "no-such-model"), str(tmp_path / "nor-this")]),
                         "analyses": {"eval": {"tasks": ["adjectives"], "samples": 2, "split": ["all", "train"]}}})
    work = [Work(s, tmp_path / "out" / s.rel) for s in plan_steps(study)]
    done = []
    with pytest.raises(IvlensError, match="no-such-model"):
        ProcessExecutor(2, threads=1).run(work, lambda w: None, lambda w, s: done.append(w))
    assert done == []


def _transformers_level(_item) -> int:
    import logging

    return logging.getLogger("transformers").getEffectiveLevel()


@pytest.mark.cli  # starts a worker process
def test_workers_are_as_quiet_as_the_study_process():
    """A new worker starts with the libraries' defaults; it copies the study process's quiet (else transformers'
    load report of a model with a missing tensor reached the study's log through the worker's queue)."""
    import logging

    from ivlens.scoped import quiet_libraries

    with quiet_libraries():
        pool = ProcessExecutor(1, threads=1)
        try:
            assert pool.map(_transformers_level, [0]) == [logging.ERROR]
        finally:
            pool.close()


def _worker_facts(name: str) -> dict:
    import os

    return {"pid": os.getpid(), "parent": os.getppid(), "env": os.environ.get(name)}


@pytest.mark.cli  # forks two workers
@pytest.mark.skipif(sys.platform == "win32", reason="no fork server on Windows: workers are spawned there")
def test_workers_come_from_the_fork_server_with_the_study_environment(monkeypatch):
    """The workers of two pools are forked by one fork server (not this process, not spawned); a variable set here
    after the server started reaches a pool started later (the server's own environment is that of its start)."""
    import os

    import psutil

    from ivlens.study.process_executor import worker_context

    assert worker_context().get_start_method() == "forkserver"
    monkeypatch.setenv("IVLENS_TEST_ENV", "first")
    pool = ProcessExecutor(2, threads=1)
    try:
        pool._start_server()
        first = pool.map(_worker_facts, ["IVLENS_TEST_ENV"] * 2)
    finally:
        pool.close()
    monkeypatch.setenv("IVLENS_TEST_ENV", "second")
    pool = ProcessExecutor(1, threads=1)
    try:
        second = pool.map(_worker_facts, ["IVLENS_TEST_ENV"])
    finally:
        pool.close()
    parents = {f["parent"] for f in first + second}
    assert len(parents) == 1 and os.getpid() not in parents  # one server forked them all
    assert "multiprocessing.forkserver" in " ".join(psutil.Process(parents.pop()).cmdline())
    assert [f["env"] for f in first] == ["first", "first"] and second[0]["env"] == "second"


@pytest.mark.cli  # starts a study process with one worker
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a worker watches its study through a pidfd: Linux")
def test_a_worker_ends_the_moment_its_study_process_is_killed(tmp_path):
    """SIGKILL the process that started the pool: its worker (forked by the fork server, which outlives it by the
    seconds its interpreter takes to shut down) ends at once, not when its task is done."""
    import signal
    import subprocess
    import time

    import psutil

    script = tmp_path / "study.py"
    script.write_text(
        "import sys, time\n"
        "from ivlens.study.process_executor import ProcessExecutor\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessExecutor(1, threads=1)\n"
        "    pool._workers().submit(time.sleep, 60)\n"
        "    print('submitted', flush=True)\n"
        "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "submitted"
        deadline = time.time() + 60
        workers: list = []
        while not workers and time.time() < deadline:  # the worker: a grandchild, under the fork server
            try:
                workers = [c for c in psutil.Process(proc.pid).children(recursive=True) if c.ppid() != proc.pid]
            except psutil.NoSuchProcess:  # a process that ended while being listed: look again
                workers = []
            time.sleep(0.05)
        assert workers
        time.sleep(1)  # the worker is sleeping in its 60-second task
        proc.send_signal(signal.SIGKILL)
        proc.wait()

        def ended(p) -> bool:  # gone, or a zombie that the shutting-down fork server has not reaped yet
            try:
                return p.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        t0 = time.time()
        while not all(map(ended, workers)) and time.time() - t0 < 30:
            time.sleep(0.02)
        assert all(map(ended, workers)) and time.time() - t0 < 2  # ended with the study, not after its task
    finally:
        proc.kill()


@pytest.mark.unit
def test_a_section_is_drawn_ahead_once_the_steps_of_its_analysis_are_done():
    """The patching section waits for the patch steps, the steering section for the steer steps; the set-up
    section (every run) and sections of analyses without a step are drawn with the page."""
    from ivlens.analyses import report_sections
    from ivlens.study.runner import sections_ahead

    steps = plan_steps(_main_job_like())
    ahead = {fn.__name__: after for fn, after in sections_ahead(report_sections(), steps)}
    assert ahead["patching_section"] == {s.rel for s in steps if s.analysis == "patch"} != set()
    assert ahead["steering_section"] == {s.rel for s in steps if s.analysis == "steer"} != set()
    assert ahead["tracing_section"] == ahead["iv_construction_section"] == {s.rel for s in steps
                                                                            if s.analysis == "trace"}
    assert "setup_section" not in ahead and "logit_lens_section" not in ahead  # no logit-lens step here


@pytest.mark.cli  # spawns two workers
def test_idle_tasks_start_in_a_worker_no_step_can_use_once_their_steps_are_done(two_tiny_dirs, tmp_path):
    """``ProcessExecutor.run(idle=...)``: while two eval steps run in two of three workers, the third computes an
    idle task that waits for nothing; a task waiting for both steps is not started (no step ran after them: the
    caller computes it)."""
    import os

    study = StudySpec(**{**tiny_study(list(two_tiny_dirs)),
                         "analyses": {"eval": {"tasks": ["adjectives", "animals"], "samples": 2, "split": ["all"]}}})
    steps = plan_steps(study)
    done = []
    pool = ProcessExecutor(3, threads=1)
    try:
        started = pool.run([Work(s, tmp_path / s.rel) for s in steps], lambda w: None,
                           lambda w, s: done.append(w.step.rel),
                           idle=[(os.getpid, frozenset()), (os.getpid, frozenset(s.rel for s in steps))])
        assert sorted(done) == sorted(s.rel for s in steps) and set(started) == {0}
        assert started[0].result() != os.getpid()  # computed in a worker
    finally:
        pool.close()
