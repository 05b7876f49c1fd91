"""The CLI wraps the API: help, tasks commands, eval, and clean errors instead of tracebacks."""

from __future__ import annotations

from typer.testing import CliRunner

from ivlens.cli import app
from ivlens.runs import RunDir

runner = CliRunner()


def test_help_lists_commands():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("eval", "tasks", "run", "merge"):
        assert cmd in r.output


def test_tasks_list_and_show():
    r = runner.invoke(app, ["tasks", "list"])
    assert r.exit_code == 0 and "adjectives" in r.output and "snarks" in r.output
    r = runner.invoke(app, ["tasks", "show", "animals", "--n", "1"])
    assert r.exit_code == 0 and "can_fly" in r.output and "cardinal" in r.output


def test_tasks_check_reports_file_errors_cleanly(tmp_path):
    (tmp_path / "t.csv").write_text("query,a\nbig,bigger\n")
    (tmp_path / "s.yaml").write_text("name: t\ndata: t.csv\nfield: W\nsubtasks:\n  a: {instruction: Do a.}\n  b: {instruction: Do b.}\n")
    r = runner.invoke(app, ["tasks", "check", str(tmp_path / "s.yaml")])
    assert r.exit_code == 2
    assert "missing column(s) ['b']" in r.output and "Traceback" not in r.output


def test_tasks_check_with_model(tiny_dir):
    d = tiny_dir("olmo2")
    r = runner.invoke(app, ["tasks", "check", "animals", "--model", str(d)])
    assert "error(s)" in r.output and "with the tokenizer of" in r.output


def test_eval_command_writes_run(tiny_dir, tmp_path):
    d = tiny_dir("qwen2")
    out = tmp_path / "run"
    r = runner.invoke(app, ["eval", "--model", str(d), "--task", "animals", "--samples", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"results: {out}" in r.output.replace("\n", "")
    run = RunDir.open(out)
    assert run.manifest["args"]["samples"] == 3 and len(run.read_table("results")) == 3 * 2 * 3


def test_eval_bad_model_is_a_clean_error(tmp_path):
    r = runner.invoke(app, ["eval", "--model", str(tmp_path), "--task", "animals"])
    assert r.exit_code == 2 and "error" in r.output and "Traceback" not in r.output
