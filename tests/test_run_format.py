"""The run format: every manifest records it (``run_format``; none = format 1), a format-1 run directory is read as
this format's (eval's 0-based ranks gain 1; patching's, steering's and the organism's ``ia`` is ``ia_top1``; in
:func:`ivlens.runs.current_table` only) and never continued: ``--resume``, ``ivlens merge`` and a study's unfinished
step refuse it in one line (exit 2 at the CLI)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from ivlens.analyses import run_spec
from ivlens.api import run_eval
from ivlens.cli import app
from ivlens.eval import EvalSpec
from ivlens.merge import merge_runs
from ivlens.models.load import LoadedModel
from ivlens.page.reader import read_study
from ivlens.report import build_report
from ivlens.runs import (
    FORMAT_CHANGES,
    RUN_FORMAT,
    RunDir,
    RunFormatError,
    atomic_write_json,
    atomic_write_parquet,
    current_table,
    run_format,
    stored_columns,
)
from ivlens.study.plan import Step
from ivlens.study.runner import step_state
from ivlens.testing.tiny import tiny_model

RANKS = FORMAT_CHANGES[2].one_less[("eval", "results")]


def as_format_1(run: Path, out: Path) -> Path:
    """A copy of the eval run ``run`` as format 1 wrote it: its manifest without ``run_format`` and its ranks
    0-based (one less), in the whole table and in its shards."""
    shutil.copytree(run, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest.pop("run_format") == 2
    atomic_write_json(out / "manifest.json", manifest)
    for table in [out / "results.parquet", *sorted((out / "results").glob("shard-*.parquet"))]:
        if table.is_file():
            df = pd.read_parquet(table)
            atomic_write_parquet(table, df.assign(**{c: df[c] - 1 for c in RANKS if c in df}))
    return out


@pytest.fixture(scope="module")
def eval_runs(tmp_path_factory):
    """A finished tiny eval run of this format and its format-1 copy."""
    from ivlens.testing.tiny import tiny_tokenizer

    root = tmp_path_factory.mktemp("run-format")
    lm = LoadedModel.wrap(tiny_model("gpt2"), tiny_tokenizer(), "tiny-gpt2")
    spec = EvalSpec(models=("tiny-gpt2",), task="animals", samples=3, seed=2, score="answer")
    run, _, _ = run_eval(spec, models=[lm], out=root / "current")
    return run.path, as_format_1(run.path, root / "format1"), spec, lm


@pytest.mark.unit
def test_every_new_run_records_the_run_format_and_a_manifest_without_it_is_format_1(tmp_path):
    run = RunDir.create("eval", "x", out=tmp_path / "run")
    assert RUN_FORMAT == 2 and run.manifest["run_format"] == RUN_FORMAT
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["run_format"] == 2
    assert run_format({"command": "eval"}) == 1 and run_format(run.manifest) == 2


@pytest.mark.unit
def test_current_table_adds_one_to_format_1_eval_ranks_and_nothing_else():
    results = pd.DataFrame({"first_token_rank": [0, 3], "first_token_rank_in_space": [0, 1], "answer_rank": [2, 0],
                            "answer_rank_in_space": [1, 0], "first_token_top1": [True, False], "ia": [True, True]})
    old = current_table({"command": "eval"}, "results", results)
    assert old["first_token_rank"].tolist() == [1, 4] and old["first_token_rank_in_space"].tolist() == [1, 2]
    assert old["answer_rank"].tolist() == [3, 1] and old["answer_rank_in_space"].tolist() == [2, 1]
    pd.testing.assert_frame_equal(old.drop(columns=list(RANKS)), results.drop(columns=list(RANKS)))
    assert (results["first_token_rank"] == [0, 3]).all()  # the frame read is not changed in place
    # a current run, another table of eval (its summary: top1 and mrr never changed), another analysis's table
    for manifest, name in (({"command": "eval", "run_format": 2}, "results"), ({"command": "eval"}, "summary"),
                           ({"command": "patch"}, "results")):
        assert current_table(manifest, name, results) is results
    # a subset of the columns (the report reads some only)
    assert current_table({"command": "eval"}, "results", results[["ia", "answer_rank"]])["answer_rank"].tolist() == [3, 1]


#: the tables format 1 wrote with the top-1 token's IA named ``ia`` (run command, table name)
IA_TABLES = (("patch", "patch"), ("patch", "baselines"), ("patch", "single_layer"), ("patch", "strongest_sets"),
             ("steer", "steer"), ("steer", "baselines"), ("organism", "iv_transfer"))


@pytest.mark.unit
def test_current_table_renames_format_1_ia_of_patch_steer_and_organism_tables_and_nothing_else():
    rows = pd.DataFrame({"sample": [0, 1], "ia": [True, False], "acc_top1": [False, False], "rank": [2, 1]})
    for command, name in IA_TABLES:
        got = current_table({"command": command}, name, rows)
        assert list(got.columns) == ["sample", "ia_top1", "acc_top1", "rank"], (command, name)
        pd.testing.assert_frame_equal(got.rename(columns={"ia_top1": "ia"}), rows)  # the values as they were
        assert list(rows.columns) == ["sample", "ia", "acc_top1", "rank"]  # the frame read is not changed
        assert current_table({"command": command, "run_format": RUN_FORMAT}, name, rows) is rows
        # a subset of the columns (the report reads some only): asked by this format's names, read by format 1's
        assert stored_columns({"command": command}, name, ["sample", "ia_top1"]) == ["sample", "ia"]
        assert stored_columns({"command": command, "run_format": 2}, name, ["ia_top1"]) == ["ia_top1"]
        assert stored_columns({"command": command}, name, None) is None
    dose = pd.DataFrame({"ia": [0.5], "ia_sem": [0.1], "acc_top1": [0.2], "acc_top1_sem": [0.05]})
    assert list(current_table({"command": "steer"}, "dose_response", dose).columns) == [
        "ia_top1", "ia_top1_sem", "acc_top1", "acc_top1_sem"]
    versus = pd.DataFrame(columns=["steer_ia", "steer_acc", "patch_ia", "patch_acc", "set_ia", "n"])
    assert list(current_table({"command": "steer"}, "steer_vs_patch", versus).columns) == [
        "steer_ia_top1", "steer_acc", "patch_ia_top1", "patch_acc", "set_ia_top1", "n"]
    # eval's ia (the generated answer lies in the label space) keeps its name; so does any other analysis's table
    results = pd.DataFrame({"ia": [True], "answer_ia": [True]})
    for command, name in (("eval", "results"), ("eval", "summary"), ("patch", "interactions"), ("probe", "patch")):
        assert current_table({"command": command}, name, results) is results
        assert stored_columns({"command": command}, name, ["ia"]) == ["ia"]


@pytest.mark.unit
def test_the_report_reads_a_format_1_patch_run_with_ia_top1(tmp_path):
    """A format-1 patch run's shards, read whole or by some columns (the report) and by :meth:`RunDir.read_table`
    (``ivlens steer --patch-run``), have ``ia_top1`` where format 1 wrote ``ia``."""
    run = RunDir.create("patch", "old", out=tmp_path / "old")
    rows = pd.DataFrame({"model": ["m", "m"], "sample": [0, 1], "ia": [True, False], "acc_top1": [True, False]})
    run.write_unit_file("patch", "a", rows.iloc[:1])
    run.write_unit_file("patch", "b", rows.iloc[1:])
    run.finish()
    manifest = json.loads((run.path / "manifest.json").read_text())
    assert manifest.pop("run_format") == 2
    atomic_write_json(run.path / "manifest.json", manifest)
    want = rows.rename(columns={"ia": "ia_top1"})
    [old] = read_study(run.path).of("patch")
    pd.testing.assert_frame_equal(old.table("patch"), want, check_exact=True)
    pd.testing.assert_frame_equal(old.table("patch", columns=["sample", "ia_top1"]), want[["sample", "ia_top1"]])
    pd.testing.assert_frame_equal(RunDir.open(run.path).read_table("patch"), want, check_exact=True)


def test_eval_ranks_are_one_based_and_the_summary_reads_them(eval_runs):
    current, _, _, _ = eval_runs
    res = RunDir.open(current).read_table("results")
    for col in RANKS:
        assert res[col].min() >= 1, col
    assert (res["first_token_top1"] == (res["first_token_rank"] == 1)).all()
    assert (res["answer_top1"] == (res["answer_rank"] == 1)).all()
    summary = RunDir.open(current).read_table("summary")
    mrr = res.assign(rr=1 / res["answer_rank"]).groupby(["subtask", "condition"], sort=False)["rr"].mean()
    assert summary.set_index(["subtask", "condition"])["mrr"].tolist() == pytest.approx(mrr.tolist())


def test_the_report_reads_a_format_1_eval_run_as_this_format(eval_runs, tmp_path):
    current, old, _, _ = eval_runs
    assert (pd.read_parquet(old / "results.parquet")["answer_rank"] == 0).any()  # stored 0-based
    want = RunDir.open(current).read_table("results")
    (new_run,), (old_run,) = read_study(current).of("eval"), read_study(old).of("eval")
    pd.testing.assert_frame_equal(old_run.table("results"), want, check_exact=True)
    pd.testing.assert_frame_equal(RunDir.open(old).read_table("results"), want, check_exact=True)
    pd.testing.assert_frame_equal(old_run.table("results", columns=["answer_rank"]), want[["answer_rank"]])
    pd.testing.assert_frame_equal(old_run.table("summary"), new_run.table("summary"), check_exact=True)
    page = build_report(old, tmp_path / "old.html").read_text()
    assert "Instruction following" in page and "could not be drawn" not in page


def test_resume_refuses_a_format_1_run_in_one_line(eval_runs, tmp_path):
    _, old, spec, lm = eval_runs
    with pytest.raises(RunFormatError, match=r"--resume .*format1: a run directory of run format 1; this ivlens "
                                             r"continues only format 2 runs \(format 2: eval's rank columns are "
                                             r"1-based, top-1 is rank 1; the patch, steer and organism tables' ia "
                                             r"\(top-1 token in the label space\) is ia_top1\): rerun into a new "
                                             r"--out directory"):
        run_eval(spec, models=[lm], resume=old)
    # refused before any model loads: a model that is not there is never reached
    with pytest.raises(RunFormatError, match="run format 1"):
        run_eval(spec.model_copy(update={"models": ("/nonexistent/model",)}), resume=old)
    r = CliRunner().invoke(app, ["eval", "--resume", str(old)], env={"COLUMNS": "400"})
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and str(old) in lines[0] and "run format 1" in lines[0] and "new --out" in lines[0], r.output
    assert "Traceback" not in r.output


@pytest.mark.unit
def test_a_study_refuses_to_continue_a_format_1_step(tmp_path):
    spec = EvalSpec(models=("m",), task="animals")
    step = Step("eval", spec, "eval/animals")
    d = tmp_path / "eval" / "animals"
    d.mkdir(parents=True)
    manifest = {"command": "eval", "spec": spec.model_dump(mode="json"), "spec_hash": spec.hash(), "status": "running"}
    atomic_write_json(d / "manifest.json", manifest)
    with pytest.raises(RunFormatError, match="run format 1.*another --out, or remove that directory"):
        step_state(step, d)
    atomic_write_json(d / "manifest.json", manifest | {"status": "finished"})  # finished: the report reads it
    assert step_state(step, d) == "done"
    atomic_write_json(d / "manifest.json", manifest | {"run_format": RUN_FORMAT})
    assert step_state(step, d) == "resume"


@pytest.mark.cli
def test_merge_refuses_format_1_shards_in_one_line(two_tiny_dirs, tmp_path):
    spec = EvalSpec(models=two_tiny_dirs[:1], task="animals", samples=2, chunk_size=1)
    s0, s1 = (run_spec(spec.model_copy(update={"shard": f"{i}/2"}), out=tmp_path / f"s{i}") for i in range(2))
    old = as_format_1(Path(s1), tmp_path / "s1-format1")
    with pytest.raises(RunFormatError, match=r"ivlens merge: .*s1-format1: a run directory of run format 1"):
        merge_runs([s0, old], tmp_path / "m1")
    assert not (tmp_path / "m1").exists()  # refused before anything is copied
    r = CliRunner().invoke(app, ["merge", str(s0), str(old), "--out", str(tmp_path / "m2")], env={"COLUMNS": "400"})
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "run format 1" in lines[0] and "new --out" in lines[0], r.output
    merged = merge_runs([s0, s1], tmp_path / "m3")  # this format's shards merge, into a run of this format
    assert RunDir.open(merged).manifest["run_format"] == RUN_FORMAT
