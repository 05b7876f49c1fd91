"""Steering streams shards and resumes: a real SIGKILL mid-run, then --resume, gives exactly the uninterrupted
rows (as tests/test_patching_resume.py for patch)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ivlens.runs import RunDir
from ivlens.testing.tiny import tiny_model, tiny_tokenizer

N_SAMPLES = 12
KEY = ["model", "sample", "vector", "alpha", "layer", "position"]


def _cmd(model_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ivlens", "steer", "--model", str(model_dir), "--task", "adjectives",
            "--subtask", "adj_ant", "--alphas", "0,1,4", "--samples", str(N_SAMPLES), "--max-per-subtask", "8",
            "--chunk-size", "1", "--threads", "1", "--no-figures", *extra]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    tiny_model("olmo2", n_layers=4, d_model=64, n_heads=4).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sigkill_then_resume_gives_exactly_the_uninterrupted_rows(model_dir, tmp_path):
    full, broken = tmp_path / "full", tmp_path / "broken"
    subprocess.run(_cmd(model_dir, "--out", str(full)), check=True, env=_env(), capture_output=True)

    proc = subprocess.Popen(_cmd(model_dir, "--out", str(broken)), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((broken / "steer").glob("shard-*.parquet"))) < 2:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    n_before = len(list((broken / "steer").glob("shard-*.parquet")))
    assert 2 <= n_before < N_SAMPLES, "the run must have been killed part-way"
    assert RunDir.open(broken).manifest["status"] == "running"

    subprocess.run([sys.executable, "-m", "ivlens", "steer", "--resume", str(broken), "--no-figures"],
                   check=True, env=_env(), capture_output=True)
    a, b = RunDir.open(full), RunDir.open(broken)
    assert b.manifest["status"] == "finished"
    for table in ("steer", "baselines", "dose_response"):
        pd.testing.assert_frame_equal(a.read_table(table), b.read_table(table))
    rows = b.read_table("steer")
    assert not rows.duplicated(KEY).any()
    assert len(rows) == N_SAMPLES * 2 * 3 * 4 * 3  # samples × vectors × α × layers × positions


def test_resume_refuses_other_options(model_dir, tmp_path):
    run = tmp_path / "run"
    subprocess.run(_cmd(model_dir, "--out", str(run), "--samples", "1"), check=True, env=_env(),
                   capture_output=True)
    res = subprocess.run([sys.executable, "-m", "ivlens", "steer", "--resume", str(run), "--alphas", "0,2"],
                         env=_env(), capture_output=True, text=True)
    assert res.returncode == 2
    assert "--alphas '0,1,4' → '0,2'" in res.stderr
