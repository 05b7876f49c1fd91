"""Same seed, same inputs → byte-identical Parquet tables, for every registered analysis (:data:`ivlens.analyses.ANALYSES`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ivlens.analyses import ANALYSES as REGISTERED
from ivlens.cli import app
from ivlens.specs import option_name

ANALYSES = {
    "eval": ["eval", "--task", "animals", "--samples", "3", "--seed", "3"],
    "patch": ["patch", "--task", "adjectives", "--subtask", "adj_ant", "--layers", "single", "--positions", "first,last",
              "--samples", "2", "--seed", "3", "--no-figures"],
    "probe": ["probe", "--tasks", "adjectives,animals", "--layers", "0,-1", "--max-per-subtask", "4", "--folds", "2",
              "--seed", "3"],
    "trace": ["trace", "--task", "adjectives", "--compare", "--samples", "2", "--seed", "3", "--top-k", "5",
              "--beam", "16"],
    "steer": ["steer", "--task", "adjectives", "--subtask", "adj_ant", "--alphas", "0,2", "--layers", "0,-1",
              "--positions", "first,all", "--samples", "2", "--max-per-subtask", "4", "--seed", "3", "--no-figures"],
}
#: the organism build is checked for determinism by the slow tier (tests/organism/test_organism_build_slow.py)
NOT_HERE = {"organism"}


def example_args(analysis) -> list[str]:
    """The command line of a registry entry's ``example`` (its generated command: one option per spec field)."""
    args = [analysis.name]
    for field, value in analysis.example.items():
        if isinstance(value, bool):
            args.append(option_name(field) if value else "--no-" + option_name(field)[2:])
        else:
            args += [option_name(field), ",".join(map(str, value)) if isinstance(value, tuple | list) else str(value)]
    return args


#: every other analysis runs its registry entry's example
ANALYSES.update({a.name: example_args(a) for a in REGISTERED if a.example and a.name not in ANALYSES})


def test_every_registered_analysis_is_checked():
    assert set(ANALYSES) == {a.name for a in REGISTERED} - NOT_HERE


def parquet_bytes(run_dir: Path) -> dict[str, bytes]:
    """Every Parquet file under ``run_dir`` (tables and shards), by relative path."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*.parquet"))}


@pytest.mark.parametrize("analysis", list(ANALYSES))
def test_two_runs_with_the_same_seed_write_identical_parquet(analysis, tiny_dir, tmp_path):
    model = str(tiny_dir("olmo2", n_layers=3, d_model=32))
    tables = []
    for run in ("a", "b"):
        r = CliRunner().invoke(app, [*ANALYSES[analysis], "--model", model, "--out", str(tmp_path / run)])
        assert r.exit_code == 0, r.output
        tables.append(parquet_bytes(tmp_path / run))
    a, b = tables
    assert a, f"{analysis} wrote no Parquet table"
    assert sorted(a) == sorted(b)
    differing = [name for name in a if a[name] != b[name]]
    assert differing == []
