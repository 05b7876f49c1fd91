"""`ivlens trace` end to end on a tiny saved model: --prompt, --task/--sample with argmax, --compare."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from ivlens.testing.tiny import tiny_model, tiny_tokenizer
from ivlens.tracing.cli import trace


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-olmo2")
    tiny_model("olmo2", n_layers=2).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def app():
    a = typer.Typer()
    a.command("trace")(trace)
    a.command("noop")(lambda: None)  # two commands, so "trace" is a sub-command as in ivlens.cli
    return a


def test_trace_prompt(app, model_dir, tmp_path):
    r = CliRunner().invoke(app, ["trace", "--model", str(model_dir), "--prompt", "the owl can fly", "--top-k", "5",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    graph = json.loads(next(tmp_path.glob("*.graph.json")).read_text())
    assert graph["schema"] == "ivlens.tracing.graph/1" and graph["completeness_rel_err"] < 1e-4
    paths = json.loads(next(tmp_path.glob("*.paths.json")).read_text())
    assert len(paths["paths"]) == 5
    assert list((tmp_path / "figures").glob("*.paths.png"))
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] == "finished"


def test_trace_task_sample_argmax_from_inst(app, model_dir, tmp_path):
    r = CliRunner().invoke(app, ["trace", "--model", str(model_dir), "--task", "adjectives", "--subtask", "adj_ant",
                                 "--sample", "3", "--method", "argmax", "--from-inst", "--threshold-rank", "100",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "argmax tracer" in r.output and "T_inst" in r.output
    paths = json.loads(next(tmp_path.glob("*.paths.json")).read_text())
    assert len(set(paths["sources"])) == 1 and "argmax" in paths


def test_trace_compare(app, model_dir, tmp_path):
    r = CliRunner().invoke(app, ["trace", "--model", str(model_dir), "--task", "adjectives", "--compare",
                                 "--samples", "2", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "compare.json").read_text())
    (name, s), = summary.items()
    assert s["subtasks"] == ["adj_comp", "adj_ant"] and len(s["per_layer_ab"]) == 2
    assert (tmp_path / "figures" / "overlap_by_layer.png").exists()
    assert (tmp_path / "compare.parquet").exists()


def test_trace_needs_prompt_or_task(app, model_dir):
    r = CliRunner().invoke(app, ["trace", "--model", str(model_dir)])
    assert r.exit_code != 0
