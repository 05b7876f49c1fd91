"""``ivlens patch`` through the registered CLI: models side by side, contrastive mode, --source-model, errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ivlens.cli import app
from ivlens.runs import RunDir
from ivlens.testing.tiny import save_tiny_checkpoint


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return [str(save_tiny_checkpoint(tmp_path_factory.mktemp(f"m{seed}"), "llama", seed=seed, n_layers=4, d_model=64,
                                     n_kv_heads=2)) for seed in (0, 1)]


def test_contrastive_side_by_side_with_source_model(model_dirs, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["patch", "--model", model_dirs[0], "--model", model_dirs[1], "--task", "adjectives",
                                   "--subtask", "adj_comp", "--mode", "contrastive", "--positions", "t_inst,last",
                                   "--layers", "1,3;0,2", "--samples", "3", "--source-model", model_dirs[1],
                                   "--out", str(out), "--correction", "bh"])
    assert res.exit_code == 0, res.output
    run = RunDir.open(out)
    rows = run.read_table("patch")
    assert rows.model.nunique() == 2 and set(rows.source_model) == {model_dirs[1]}
    assert set(rows.layers) == {"0", "1", "2", "3", "1,3", "0,2"} and set(rows.position) == {"t_inst", "last"}
    assert rows.logit_diff.notna().all() and (rows.target == "instructed").all()
    # 3 queries: a BH-corrected sign test cannot reach 0.05 (2 · 2⁻³ = 0.25), so no fraction but "no power"
    assert " ".join(res.output.split()).count("paper's criterion: no power at n=3; needs n ≥ 6") == 4
    assert set(run.read_table("interactions").correction) == {"bh"}
    assert run.manifest["status"] == "finished" and run.manifest["engine"]
    assert (out / "figures" / "pair_heatmaps.png").exists()


def test_model_is_required_without_resume(tmp_path):
    res = CliRunner().invoke(app, ["patch", "--samples", "2", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--model" in res.output


@pytest.mark.parametrize("args,msg", [(["--layers", "0,4"], "valid indices 0 to 3"),
                                      (["--positions", "middle"], "unknown position"),
                                      (["--mode", "contrastive", "--task", "object_counting"], "two subtasks")])
def test_errors_are_one_line(model_dirs, tmp_path, args, msg):
    res = CliRunner().invoke(app, ["patch", "--model", model_dirs[0], "--samples", "2", "--out", str(tmp_path / "r"),
                                   *args])
    assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output
    if "contrastive" not in args:
        assert not (tmp_path / "r").exists()


def test_a_patch_nothing_reads_is_not_ranked(model_dirs, tmp_path):
    """On a formatted target the first position is not the last: the last layer's patch there is read by nothing
    (its effect is 0 by construction), so the summary names it once and never calls it the strongest layer; the
    rows say which patches reach the logits, and those that do not change nothing."""
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["patch", "--model", model_dirs[0], "--task", "adjectives", "--subtask", "adj_comp",
                                   "--target", "formatted", "--positions", "first,last", "--layers", "0;1;2;3",
                                   "--samples", "3", "--out", str(out), "--no-figures"])
    assert res.exit_code == 0, res.output
    rows = RunDir.open(out).read_table("patch")
    unread = rows[~rows.reaches_logits]
    assert set(zip(unread.position, unread.layers, strict=True)) == {("first", "3")}
    assert unread.delta_logit_vs_target.abs().max() < 1e-5  # the engine agrees: nothing changes
    assert "not ranked: layer 3 at first" in res.output
    assert "first: strongest single layer 3 " not in res.output and "first: strongest single layer" in res.output
    singles = RunDir.open(out).read_table("single_layer").set_index(["position", "layer"])
    assert singles.zero_by_construction.to_dict() == {(p, layer): p == "first" and layer == 3
                                                      for p in ("first", "last") for layer in range(4)}
    top = RunDir.open(out).read_table("strongest_sets")
    assert not ((top.position == "first") & (top.layers == "3")).any()
