"""Every command that takes a task ends a malformed task file, or a task that lacks what the analysis needs,
in one error naming the file and the fix, exit code 2 and no traceback (issue 14, items 1 and 3: the task-file
cases). Runs on a tiny model directory (built in milliseconds)."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from ivlens.cli import app

runner = CliRunner()
SPEC = {"name": "mytask", "data": "t.csv", "field": "Word",
        "subtasks": {"comp": {"instruction": "Give the comparative."}, "ant": {"instruction": "Give the antonym."}}}


def _spec(d, data: bytes, spec: dict = SPEC) -> str:
    (d / "t.csv").write_bytes(data)
    (d / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(d / "spec.yaml")


def _commands(model: str, spec: str, out: str) -> dict[str, list[str]]:
    return {
        "tasks show": ["tasks", "show", spec],
        "tasks check": ["tasks", "check", spec],
        "eval": ["eval", "-m", model, "--task", spec, "--out", out],
        "patch": ["patch", "-m", model, "--task", spec, "--out", out, "--no-figures"],
        "probe": ["probe", "-m", model, "--tasks", spec, "--out", out],
        "trace": ["trace", "-m", model, "--task", spec, "--sample", "0", "--out", out],
    }


def _one_error(args: list[str], needle: str) -> None:
    r = runner.invoke(app, args)
    text = " ".join(r.output.split())  # rich wraps long lines at the terminal width
    assert r.exit_code == 2, (args, r.output, r.exception)
    assert "Traceback" not in r.output and needle in text, (args, r.output)


@pytest.mark.parametrize("command", ["tasks show", "tasks check", "eval", "patch", "probe", "trace"])
def test_malformed_task_file_is_one_error(tmp_path, tiny_dir, command):
    spec = _spec(tmp_path, "query,comp,ant\ncafé,x,y\n".encode("latin-1"))
    args = _commands(str(tiny_dir("olmo2")), spec, str(tmp_path / "run"))[command]
    _one_error(args, "t.csv: not UTF-8 text (byte 0xe9 at offset 18, line 2); save it as UTF-8")


@pytest.mark.parametrize(("command", "data", "needle"), [
    ("tasks check", b"query;comp;ant\nbig;bigger;small\n", "separated by semicolons instead of commas"),
    ("tasks check", b"query,comp,comp,ant\nbig,bigger,more,small\n", "duplicate column(s) ['comp']"),
    ("tasks show", b"query,comp,ant\n", "no data rows, only the header; add one row per query"),
])
def test_other_malformed_files(tmp_path, command, data, needle):
    _one_error(_commands("unused", _spec(tmp_path, data), "unused")[command], needle)


def test_analysis_requirements_are_one_error(tmp_path, tiny_dir):
    model = str(tiny_dir("olmo2"))
    spec = _spec(tmp_path, b"query,comp,ant\nbig,bigger,small\nhot,hotter,cold\n")
    _one_error(["probe", "-m", model, "--tasks", spec, "--out", str(tmp_path / "p")],
               "probing needs at least 2 rephrasings of each subtask's instruction; task 'mytask': comp has 0, "
               "ant has 0")
    one = {**SPEC, "subtasks": {"comp": SPEC["subtasks"]["comp"]}}
    (tmp_path / "one").mkdir()
    spec1 = _spec(tmp_path / "one", b"query,comp\nbig,bigger\n", one)
    _one_error(["patch", "-m", model, "--task", spec1, "--mode", "contrastive", "--out", str(tmp_path / "q"),
                "--no-figures"], "--mode contrastive needs a task with two subtasks; task 'mytask' has 1 (comp)")


def test_user_text_in_an_error_is_not_markup(tmp_path):
    _one_error(["tasks", "check", _spec(tmp_path, b"query,comp,ant,[/bold]\nbig,bigger,small,x\n")],
               "unexpected column(s) ['[/bold]']")
