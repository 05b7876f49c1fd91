"""``scripts/tour_figures.py``: the README tour's four figures redrawn from a finished study on two tiny models, and
a study without what a figure needs ending in one line (exit 2)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ivlens.study import StudySpec, run_study

ROOT = Path(__file__).resolve().parents[1]


def _tour():
    spec = importlib.util.spec_from_file_location("tour_figures", ROOT / "scripts" / "tour_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.cli
def test_the_tour_figures_are_drawn_from_a_finished_study(two_tiny_dirs, tmp_path):
    study = StudySpec(name="tour", models={"base": two_tiny_dirs[0], "sft": two_tiny_dirs[1]},
                      tasks=["adjectives"],
                      analyses={"patch": {"subtask": "adj_comp", "layers": "pairs", "positions": "first,last",
                                          "samples": 4, "target": "formatted", "threads": 1, "figures": False},
                                "probe": {"layers": "0,-1", "max_per_subtask": 8, "folds": 2, "batch_size": 4},
                                "trace": {"compare": True, "samples": 2, "top_k": 5, "beam": 8}})
    run_study(study, tmp_path / "study", report=False)
    out = tmp_path / "img"
    assert _tour().main([str(tmp_path / "study"), "--out", str(out)]) == 0
    names = {"tour-single-layer.png", "tour-pair-heatmaps.png", "tour-probe-accuracy.png",
             "tour-trace-selectivity.png"}
    assert {p.name for p in out.iterdir()} == names
    for name in names:
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000, name


@pytest.mark.cli
def test_a_study_without_a_patch_run_is_one_line(two_tiny_dirs, tmp_path, capsys):
    study = StudySpec(name="noprobe", models={"base": two_tiny_dirs[0]}, tasks=["adjectives"],
                      analyses={"eval": {"samples": 2, "split": ["all"]}})
    run_study(study, tmp_path / "study", report=False)
    capsys.readouterr()
    assert _tour().main([str(tmp_path / "study"), "--out", str(tmp_path / "img")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no finished patch run on the formatted target" in err[0]
    assert not (tmp_path / "img").exists()
