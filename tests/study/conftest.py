"""The study tests' shared reference: the tiny study (:func:`test_study.tiny_study`) run once per test run."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from run_shared import built_once
from test_study import tiny_study

from ivlens.study import load_study, run_study


def run_tiny_study(root: Path, models: tuple[str, str]) -> Path:
    """Into ``root``: copies of the two tiny checkpoints ``models`` (:func:`two_tiny_dirs`), the tiny study of them
    (``tiny.yaml``) and its uninterrupted run (``full/``): one step after another in this process, on one torch
    thread (as under ``OMP_NUM_THREADS=1``, and as each worker of ``--jobs 2``), report included. Returns ``root``."""
    dirs = [str(shutil.copytree(m, root / Path(m).name)) for m in models]
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny_study(dirs)))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_study(load_study(root / "tiny.yaml"), root / "full")
    finally:
        torch.set_num_threads(before)
    return root


@pytest.fixture(scope="session")
def tiny_study_run(tmp_path_factory, two_tiny_dirs) -> Path:
    """The tiny study run once per test run and shared by the test processes (:func:`run_tiny_study`; every
    process's ``two_tiny_dirs`` hold the same bytes): the reference that steps side by side, and a killed and
    resumed study, must equal. ``<dir>/tiny.yaml`` (the study), ``<dir>/full`` (its run). Read it; run the study
    elsewhere."""
    return built_once(tmp_path_factory, "tiny-study", functools.partial(run_tiny_study, models=two_tiny_dirs))
