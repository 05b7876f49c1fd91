"""Streaming shards and --resume: a real SIGKILL mid-run, then resume, gives exactly the uninterrupted rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from cli_process import CliProcess  # tests/: ivlens ARGS as a process forked from the fork server
from test_run_contract import _run_here  # tests/: ivlens ARGS here, on one torch thread as the processes

from ivlens.runs import RunDir
from ivlens.testing.tiny import tiny_model, tiny_tokenizer

N_SAMPLES = 24
KEY = ["model", "sample", "position", "layers"]


def _args(model_dir: Path, *extra: str) -> list[str]:
    return ["--model", str(model_dir), "--task", "adjectives", "--subtask", "adj_ant", "--layers", "triplets",
            "--positions", "first,last", "--samples", str(N_SAMPLES), "--chunk-size", "1", "--threads", "1",
            "--no-figures", *extra]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    tiny_model("olmo2", n_layers=6, d_model=128, n_heads=4).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sigkill_then_resume_gives_exactly_the_uninterrupted_rows(model_dir, tmp_path):
    full, broken = tmp_path / "full", tmp_path / "broken"
    _run_here("patch", *_args(model_dir, "--out", str(full)))  # the reference, in this process; the killed run and
    # its resumption are processes

    # the killed run: forked from the fork server (tests/cli_process.py; no interpreter start-up to wait for)
    proc = CliProcess(["patch", *_args(model_dir, "--out", str(broken))], _env(), Path.cwd(), tmp_path / "killed.log")
    deadline = time.time() + 120
    while time.time() < deadline and len(list((broken / "patch").glob("shard-*.parquet"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    n_before = len(list((broken / "patch").glob("shard-*.parquet")))
    assert 3 <= n_before < N_SAMPLES, "the run must have been killed part-way"
    assert RunDir.open(broken).manifest["status"] == "running"

    # the resumption: a real interpreter, through the command's own module entry point
    subprocess.run([sys.executable, "-m", "ivlens.cli.patch", "--resume", str(broken), "--no-figures"],
                   check=True, env=_env(), capture_output=True)
    a, b = RunDir.open(full), RunDir.open(broken)
    assert b.manifest["status"] == "finished"
    for table in ("patch", "baselines"):
        ta, tb = a.read_table(table), b.read_table(table)
        assert len(tb) == len(ta)
        pd.testing.assert_frame_equal(ta, tb)
    rows = b.read_table("patch")
    assert not rows.duplicated(KEY).any()
    assert len(rows) == N_SAMPLES * 2 * (6 + 15 + 20)
    pd.testing.assert_frame_equal(a.read_table("interactions"), b.read_table("interactions"))
