"""The run contract: specs (typed, frozen, hashed), ``--resume`` checks, one sample selector, one error line.

The SIGKILL tests start ``ivlens`` on a tiny random model as a process (forked from the study's fork server, which
has imported ivlens once: ``tests/cli_process.py``), kill it once some units of work are on disk, resume it (a
process again), and compare every table with an uninterrupted run's (made in this process, on one torch thread as
the processes).
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from cli_process import CliProcess  # tests/: ivlens ARGS as a process forked from the fork server
from pydantic import ValidationError
from typer.testing import CliRunner

from ivlens.cli import app
from ivlens.eval import EvalSpec
from ivlens.patching import PatchSpec
from ivlens.probing import ProbeSpec
from ivlens.runs import RunDir, content_hash, slug
from ivlens.specs import SpecError
from ivlens.testing.tiny import tiny_model, tiny_tokenizer
from ivlens.tracing import TraceSpec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    tiny_model("olmo2", n_layers=4, d_model=64, n_heads=4).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


# ------------------------------------------------------------------------------------------ names
def test_one_slug_names_run_directories_unit_files_and_a_models_files(tmp_path):
    """``ivlens.runs.slug``: each run of characters other than ASCII letters, digits and ``_.-`` becomes one ``-``,
    none at the ends; the run directory cuts each part to 60 characters and falls back to ``run``."""
    assert slug("smollm2-135m-instruct") == "smollm2-135m-instruct" and slug("organism-sft") == "organism-sft"
    assert slug("/tmp/my model//v2/") == "tmp-my-model-v2"
    assert slug("probe:runs/x") == "probe-runs-x" and slug("means:/abs/run@other") == "means-abs-run-other"
    assert [slug(v) for v in ("heldout", 0.5, 3, True, "-1", "a--b")] == ["heldout", "0.5", "3", "True", "1", "a--b"]
    assert slug("modèle") == "mod-le"  # ASCII only: a file name every file system and shell takes as it is
    assert slug(" / ") == "x" and slug("", fallback="run") == "run" and slug("ab-cd", max_len=3) == "ab-"
    run = RunDir.create("patch", "/models/a b" + "c" * 80, root=tmp_path)
    assert run.path.name.split("-", 2)[2] == "patch-models-a-b" + "c" * 50
    assert run.unit_file_path("rows", "m/0:1").name == "shard-m-0-1.parquet"
    assert RunDir.create("eval", "::", root=tmp_path).path.name.endswith("-eval-run")


# ------------------------------------------------------------------------------------------ specs
def test_spec_hash_is_the_content_hash_and_ignores_result_neutral_options():
    a = PatchSpec(models=("m",), samples=3)
    assert a.hash() == content_hash({"analysis": "patch", "spec": a.result_fields()})
    assert a.hash() == PatchSpec(models=("m",), samples=3, memory_budget="1GB", batch_size=7).hash()
    assert a.hash() != PatchSpec(models=("m",), samples=4).hash()
    with pytest.raises(ValidationError, match="frozen"):
        a.samples = 5


@pytest.mark.parametrize("spec_cls, options, expected", [
    (EvalSpec, {"models": ("m",), "task": "t", "format": "foo"}, "--format: 'foo' is not one of raw, chat"),
    (EvalSpec, {"models": ("m",), "task": "t", "splitt": "all"}, "--splitt: unknown option for EvalSpec"),
    (PatchSpec, {"models": ("m",), "correction": "bonf"}, "--correction: 'bonf' is not one of holm, bh"),
    (ProbeSpec, {"models": ("m",), "varying": "x"}, "--varying: 'x' is not one of instructions, labels"),
    (TraceSpec, {"models": ("m",), "task": "t", "method": "sideways"}, "--method: 'sideways' is not one of"),
    (TraceSpec, {"models": ("m",)}, "give either --prompt TEXT or --task T"),
    (PatchSpec, {"models": ()}, "--model: give at least one"),
    (PatchSpec, {"models": ("m",), "device": "gpu"}, "--device: 'gpu': not one of cpu, cuda"),
])
def test_bad_specs_raise_one_line_naming_the_option(spec_cls, options, expected):
    with pytest.raises(SpecError) as e:
        spec_cls(**options)
    assert expected in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ one selector
def test_every_analysis_picks_the_same_queries(model_dir, tmp_path):
    """eval, patch and trace --compare draw the same queries for the same --samples/--seed/--split (probe
    uses instruction-only prompts: no queries to draw)."""
    from ivlens.api import run_eval, run_patch, run_trace
    from ivlens.models.load import load_model

    lm = load_model(str(model_dir))
    common = {"models": (str(model_dir),), "samples": 3, "seed": 5, "split": "all"}
    _, _, _ = run_eval(EvalSpec(task="adjectives", subtask="adj_ant", **common), models=[lm], out=tmp_path / "e")
    run_patch(PatchSpec(task="adjectives", subtask="adj_ant", layers="0", positions="last", figures=False,
                        **common), models=[lm], out=tmp_path / "p")
    run_trace(TraceSpec(task="adjectives", compare=True, top_k=5, beam=8, **common), models=[lm],
              out=tmp_path / "t")
    picked = {
        "eval": set(RunDir.open(tmp_path / "e").read_table("results")["query"]),
        "patch": set(RunDir.open(tmp_path / "p").read_table("patch")["query"]),
        "trace": set(RunDir.open(tmp_path / "t").read_table("compare")["query"]),
    }
    assert len(picked["eval"]) == 3 and picked["eval"] == picked["patch"] == picked["trace"], picked


# ------------------------------------------------------------------------------------------ resume
def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(ROOT)}


def _ivlens(*args: str) -> list[str]:
    return [sys.executable, "-m", "ivlens", *args]


def _forked(*args: str, log: Path) -> CliProcess:
    """``ivlens ARGS`` as a process forked from the fork server, with :func:`_env`'s variables and one torch thread
    (``OMP_NUM_THREADS=1``), writing its output to ``log``."""
    return CliProcess(list(args), _env(), ROOT, log, threads=1)


def _kill_when(cmd: list[str] | Callable[[], Any], ready, timeout: float = 120) -> None:
    """Start ``cmd`` (a command line, or a function starting a :class:`CliProcess`), SIGKILL it as soon as
    ``ready()`` (or ``ready(proc)``) holds, and check that it really died part-way."""
    if callable(cmd):
        proc = cmd()
    else:
        proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    takes_proc = len(inspect.signature(ready).parameters) == 1  # ready(proc): it may look at the process
    while time.time() < deadline and not (ready(proc) if takes_proc else ready()) and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def _run_forked(*args: str, log: Path) -> None:
    """``ivlens ARGS`` as a forked process (:func:`_forked`), to its end; it must exit 0."""
    proc = _forked(*args, log=log)
    code = proc.wait(600)
    if code is None:  # still running after 10 minutes: end it rather than leave it behind the failed test
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert code == 0, proc.output[-2000:]


def _run_here(*args: str) -> None:
    """``ivlens ARGS`` in this process, on one torch thread as the processes of :func:`_env`
    (``OMP_NUM_THREADS=1``), so that its floats agree bit for bit with theirs: the uninterrupted reference of the
    SIGKILL tests (the killed run and its resumption stay real processes)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})
    finally:
        torch.set_num_threads(before)
    assert r.exit_code == 0, (r.output[-2000:], r.exception)


def _count(d: Path, pattern: str) -> int:
    return len(list(d.glob(pattern)))


def _same_tables(full: Path, resumed: Path, tables: list[str]) -> None:
    a, b = RunDir.open(full), RunDir.open(resumed)
    assert b.manifest["status"] == "finished" and b.manifest["spec_hash"] == a.manifest["spec_hash"]
    for t in tables:
        pd.testing.assert_frame_equal(a.read_table(t), b.read_table(t), check_exact=True)


@pytest.mark.slow  # a run here, a killed and a resumed one as processes (about 15 s on 2 busy cores)
@pytest.mark.parametrize("analysis, args, marker, n_units, tables", [
    ("eval", ["--task", "adjectives", "--samples", "12", "--chunk-size", "1", "--batch-size", "4"],
     "results/shard-*.parquet", 12, ["results", "summary", "decides"]),
    ("patch", ["--task", "adjectives", "--subtask", "adj_ant", "--layers", "pairs", "--samples", "12",
               "--chunk-size", "1", "--threads", "1", "--no-figures"],
     "patch/shard-*.parquet", 12, ["patch", "baselines", "single_layer", "interactions"]),
    ("trace", ["--task", "adjectives", "--compare", "--samples", "8", "--top-k", "5", "--beam", "8"],
     "compare_parts/part-*.json", 8, ["compare", "sample_paths", "selectivity"]),
    ("steer", ["--task", "adjectives", "--subtask", "adj_ant", "--alphas", "0,1,4", "--samples", "12",
               "--max-per-subtask", "8", "--chunk-size", "1", "--threads", "1", "--no-figures"],
     "steer/shard-*.parquet", 12, ["steer", "baselines", "dose_response", "vectors"]),
])
def test_sigkill_then_resume_equals_an_uninterrupted_run(model_dir, tmp_path, analysis, args, marker, n_units,
                                                         tables):
    full, broken = tmp_path / "full", tmp_path / "broken"
    base = [analysis, "--model", str(model_dir), *args]
    _run_here(*base, "--out", str(full))
    _kill_when(lambda: _forked(*base, "--out", str(broken), log=tmp_path / "killed.log"),
               lambda: _count(broken, marker) >= 2)
    done = _count(broken, marker)
    assert 2 <= done < n_units and RunDir.open(broken).manifest["status"] == "running"
    _run_forked(analysis, "--resume", str(broken), log=tmp_path / "resumed.log")
    assert _count(broken, marker) == n_units
    _same_tables(full, broken, tables)


@pytest.mark.slow
def test_probe_sigkill_then_resume_equals_an_uninterrupted_run(model_dir, tmp_path):
    full, broken = tmp_path / "full", tmp_path / "broken"
    base = ["probe", "--model", str(model_dir), "--tasks", "adjectives,animals", "--layers", "0,-1",
            "--max-per-subtask", "24", "--batch-size", "2", "--folds", "2"]
    _run_here(*base, "--out", str(full))
    shards = "ivs/*/shard-*.safetensors"
    _kill_when(lambda: _forked(*base, "--out", str(broken), log=tmp_path / "killed.log"),
               lambda: _count(broken, shards) >= 3)
    n_total = _count(full, shards)
    assert 3 <= _count(broken, shards) < n_total
    _run_forked("probe", "--resume", str(broken), log=tmp_path / "resumed.log")
    assert _count(broken, shards) == n_total
    _same_tables(full, broken, ["instructions", "probe_accuracy", "projections", "similarity"])


@pytest.mark.cli
def test_resume_with_a_different_option_names_it(model_dir, tmp_path):
    run = tmp_path / "run"
    _run_forked("eval", "--model", str(model_dir), "--task", "animals", "--samples", "2", "--out", str(run),
                log=tmp_path / "eval.log")
    r = CliRunner().invoke(app, ["eval", "--resume", str(run), "--samples", "3", "--format", "chat"])
    assert r.exit_code == 2
    line = " ".join(r.output.split())
    assert "--samples 2 → 3" in line and "--format 'raw' → 'chat'" in line and "Traceback" not in r.output
    stored = json.loads((run / "manifest.json").read_text())["spec"]
    assert stored["samples"] == 2 and stored["format"] == "raw"


# ------------------------------------------------------------------------------------------ one error line
#: (args, the expected part of the line, whether it runs as a real ``python -m ivlens`` process). Two cases run as
#: processes (a usage error typer finds, an error ivlens raises), to check the exit code and stderr of the console
#: entry point itself; the others run in-process through :func:`ivlens.cli.main`, the same boundary, with the same
#: assertions (exit code 2, no traceback, exactly one ``error:`` line on stderr), without a Python start-up each.
BAD_INPUT = [
    (["eval", "--model", "m", "--task", "adjectives", "--format", "foo"], "'foo' is not one of 'raw', 'chat'", True),
    (["trace", "--model", "m", "--method", "sideways"], "'sideways' is not one of 'exact', 'argmax'", False),
    (["patch", "--model", "m", "--split", "some"], "is not one of 'heldout', 'train', 'all'", False),
    (["probe", "--model", "m", "--varying", "x"], "is not one of 'instructions', 'labels'", False),
    (["organism", "build", "--size", "huge"], "'huge' is not one of 'small', 'tiny'", False),
    (["eval", "--model", "m", "--task", "no-such-task"], "unknown task 'no-such-task'", False),
    (["trace", "--model", "m"], "give either --prompt TEXT or --task T", False),
    (["patch", "--resume", "/no/such/run"], "no manifest.json", True),
]


@pytest.mark.cli
@pytest.mark.parametrize("args, expected, as_process", BAD_INPUT)
def test_bad_input_ends_in_one_red_line_and_exit_code_2(args, expected, as_process, monkeypatch, capsys):
    if as_process:
        r = subprocess.run(_ivlens(*args), env={**_env(), "COLUMNS": "400"}, cwd=ROOT, capture_output=True,
                           text=True)
        assert r.returncode == 2, r.stderr
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], r.stderr
    else:
        from test_error_battery import _one_error_line  # exit code 2, no traceback, one ``error:`` line

        assert expected in _one_error_line(args, monkeypatch, capsys)
