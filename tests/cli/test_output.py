"""Quiet, readable output: no third-party progress bars in ivlens's output unless --verbose, and result tables
that keep every identifying value whole at 80 columns."""

from __future__ import annotations

import pandas as pd
from rich.console import Console
from typer.testing import CliRunner

from ivlens.cli import app
from ivlens.cli.common import frame_table

THIRD_PARTY_BARS = ("Loading weights", "Loading checkpoint shards", "de-quantizing", "Writing model shards", "it/s]")


def test_eval_at_80_columns_has_whole_values_and_no_third_party_bars(tiny_dir, tmp_path):
    model = str(tiny_dir("llama", n_layers=2, d_model=32))
    r = CliRunner().invoke(app, ["eval", "--model", model, "--task", "adjectives", "--samples", "2",
                                 "--out", str(tmp_path / "e")], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert not [b for b in THIRD_PARTY_BARS if b in r.output], r.output
    table_lines = [x for x in r.output.splitlines() if x.startswith(("┃", "│"))]
    assert table_lines and all(len(x) <= 80 for x in table_lines)
    assert not [x for x in table_lines if "…" in x], r.output
    for value in ("instructed", "query_only", "other_instruction", "adj_comp", "adj_ant", "adjectives"):
        assert value in r.output


def test_verbose_shows_third_party_bars_again(tiny_dir, tmp_path):
    model = str(tiny_dir("llama", n_layers=2, d_model=32))
    r = CliRunner().invoke(app, ["--verbose", "eval", "--model", model, "--task", "animals", "--samples", "1",
                                 "--out", str(tmp_path / "e")], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert "Loading weights" in r.output


def test_frame_table_folds_long_values_and_lifts_shared_ones_into_the_title():
    df = pd.DataFrame({"model": ["smollm2-135m-instruct", "organism-natural-sft"], "task": ["object_counting"] * 2,
                       "condition": ["other_instruction", "query_only"], "top1": [0.5, 0.25]})
    console = Console(width=40, record=True)
    console.print(frame_table(df, title="eval"))
    text = console.export_text()
    assert "…" not in text and "task: object_counting" in text
    cells = [line.split("│")[1:-1] for line in text.splitlines() if line.startswith("│")]
    column = ["".join(c[i].strip() for c in cells) for i in range(3)]  # each column's folded pieces, in order
    assert column[0] == "smollm2-135m-instructorganism-natural-sft"
    assert column[1] == "other_instructionquery_only"
