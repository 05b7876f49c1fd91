"""``ivlens run --executor ray``: a study on a local Ray instance with 2 CPUs gives the same tables as a local
run (each sweep split into shard tasks, then merged; a trace of one prompt run whole, after the probe step whose
direction it reads)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ivlens.study import StudySpec, run_study
from ivlens.study.executors import Work
from ivlens.study.plan import plan_steps

sys.path.insert(0, str(Path(__file__).parent))
from test_study import _same, _tables, tiny_study  # noqa: E402

#: a steering sweep (2 shards of 1-sample chunks over both models) and the IV construction of the probe's layer-0
#: direction: the main job's two newest kinds of steps
STEER = {"tasks": ["adjectives"], "subtask": "adj_ant", "alphas": "0,2", "layers": "0,-1", "positions": "first",
         "samples": 3, "chunk_size": 1, "max_per_subtask": 4, "threads": 1, "figures": False}
READOUT = {"tasks": ["animals"], "readout": "probe:probe:0", "position": "t_inst", "sample": 0, "beam": 8,
           "top_k": 5}


def ray_study(dirs) -> dict:
    data = tiny_study(dirs, name="ray")
    data["analyses"]["steer"] = STEER
    data["analyses"]["trace"] = READOUT  # instead of --compare (tested sharded in test_sharding.py), for time
    return data


@pytest.mark.cli
def test_a_study_on_ray_equals_a_local_run(two_tiny_dirs, tmp_path):
    from ivlens.study.ray_executor import RayExecutor

    study = StudySpec(**ray_study(two_tiny_dirs))
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray worker (1 CPU each): the same threads give the same floats
    try:
        run_study(study, tmp_path / "local", report=False)
    finally:
        torch.set_num_threads(before)
    heard: list[str] = []
    res = run_study(study, tmp_path / "ray", executor=RayExecutor(shards=2, num_cpus=2), say=heard.append)
    assert set(res.states.values()) == {"new"} and res.report.is_file()
    assert not (tmp_path / "ray" / ".shards").exists()  # merged, then dropped
    # the read-out starts only once its probe step is merged, and steering once the patch step it is compared with
    # is; the steps without dependencies ran side by side
    def finished(step: str) -> int:
        return next(i for i, line in enumerate(heard) if line.startswith(f"{step}: finished"))

    assert heard.index("trace/animals: running ivlens trace") > finished("probe")
    assert heard.index("steer/adjectives: running ivlens steer") > finished("patch/adjectives")
    assert heard.index("patch/adjectives: running ivlens patch") < finished("eval/adjectives-all")
    tables = _tables(tmp_path / "local")
    assert {"steer/adjectives/vectors", "trace/animals/readout_components"} <= set(tables)
    _same(tables, _tables(tmp_path / "ray"))


def test_a_step_runs_whole_when_its_spec_cannot_be_sharded_or_resumes_a_local_run():
    from ivlens.study.ray_executor import RayExecutor

    steps = {s.rel: s for s in plan_steps(StudySpec(**ray_study(["m0", "m1"])))}
    whole = {rel: RayExecutor.runs_whole(Work(s, Path(rel))) for rel, s in steps.items()}
    assert whole == {"eval/adjectives-all": False, "patch/adjectives": False, "probe": False,
                     "steer/adjectives": False, "trace/animals": True}
    assert RayExecutor.runs_whole(Work(steps["patch/adjectives"], Path("x"), resume=True))


def test_a_task_asks_for_a_gpu_when_its_step_runs_on_cuda():
    from ivlens.study.ray_executor import RayExecutor

    data = tiny_study(["m0", "m1"])
    cpu = plan_steps(StudySpec(**data))[1]
    gpu = plan_steps(StudySpec(**{**data, "device": "cuda"}))[1]
    assert RayExecutor.resources(Work(cpu, Path("x"))) == {"num_cpus": 1, "num_gpus": 0}
    assert RayExecutor.resources(Work(gpu, Path("x"))) == {"num_cpus": 1, "num_gpus": 1}
