"""``ivlens run --executor ray``: a study on a local Ray instance with 2 CPUs gives the same tables as a local
run (each step split into shard tasks, then merged)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ivlens.study import StudySpec, run_study
from ivlens.study.executors import Work
from ivlens.study.plan import plan_steps

sys.path.insert(0, str(Path(__file__).parent))
from test_study import _same, _tables, tiny_study  # noqa: E402


def test_a_study_on_ray_equals_a_local_run(two_tiny_dirs, tmp_path):
    from ivlens.study.ray_executor import RayExecutor

    data = tiny_study(two_tiny_dirs, name="ray")
    data["analyses"].pop("trace")  # eval, patch and probe: every kind of unit; kept short for the default suite
    study = StudySpec(**data)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray worker (1 CPU each): the same threads give the same floats
    try:
        run_study(study, tmp_path / "local", report=False)
    finally:
        torch.set_num_threads(before)
    res = run_study(study, tmp_path / "ray", executor=RayExecutor(shards=2, num_cpus=2))
    assert set(res.states.values()) == {"new"} and res.report.is_file()
    assert not (tmp_path / "ray" / ".shards").exists()  # merged, then dropped
    _same(_tables(tmp_path / "local"), _tables(tmp_path / "ray"))


def test_a_task_asks_for_a_gpu_when_its_step_runs_on_cuda():
    from ivlens.study.ray_executor import RayExecutor

    data = tiny_study(["m0", "m1"])
    cpu = plan_steps(StudySpec(**data))[1]
    gpu = plan_steps(StudySpec(**{**data, "device": "cuda"}))[1]
    assert RayExecutor.resources(Work(cpu, Path("x"))) == {"num_cpus": 1, "num_gpus": 0}
    assert RayExecutor.resources(Work(gpu, Path("x"))) == {"num_cpus": 1, "num_gpus": 1}
