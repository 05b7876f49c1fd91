"""``probe_run`` and ``ivlens probe`` end to end on tiny models (and on SmolLM2-135M-Instruct, slow)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ivlens.cli import app
from ivlens.models.load import LoadedModel
from ivlens.probing import probe_run
from ivlens.testing.tiny import tiny_model, tiny_tokenizer

runner = CliRunner()


def test_probe_run_api_two_models_side_by_side(tmp_path):
    models = [LoadedModel.wrap(tiny_model("olmo2", seed=s), tiny_tokenizer(), f"tiny-{s}") for s in (0, 1)]
    user = tmp_path / "mine.csv"
    pd.DataFrame({"index": range(8), "instruction": [f"Spell the word number {i} backwards." for i in range(8)]}
                 ).to_csv(user, index=False)
    res = probe_run(models, ["adjectives", "animals"], layers="0,-1", out=tmp_path / "run", max_per_subtask=8,
                    user_instructions={"spell": user})
    acc = res.accuracy
    assert set(acc.model) == {"tiny-0", "tiny-1"} and set(acc.layer) == {0, 3}
    assert set(acc.probe) == {"all", "task:adjectives", "task:animals"}
    allp = acc[acc.probe == "all"]
    assert (allp.n_classes == 5).all() and (allp.n == 4 * 9 + 8).all()
    # tiny random models still carry the instruction's tokens: decodable above the shuffled control
    assert (allp.cv_mean > allp.shuffled_mean).all()
    assert allp.heldout_acc.notna().all() and allp.majority.between(0.1, 0.3).all()
    # tables, IV shards and figures (PNG + data) on disk
    run = tmp_path / "run"
    for name in ("probe_accuracy", "projections", "similarity", "instructions"):
        assert (run / f"{name}.parquet").is_file()
    for fig in ("accuracy_all", "lda_scatter", "pca_scatter", "similarity_layer0"):
        assert (run / "figures" / f"{fig}.png").stat().st_size > 1000
        assert (run / "figures" / f"{fig}.parquet").is_file()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["models"]) == 2
    sim = res.similarity[(res.similarity.layer == 0) & res.similarity.centered & (res.similarity.model == "tiny-0")]
    assert len(sim) == 25 and np.isfinite(sim.cos).all()
    # same seed, same numbers
    again = probe_run(models[:1], ["adjectives", "animals"], layers="0", out=tmp_path / "run2", max_per_subtask=8,
                      user_instructions={"spell": user})
    a = acc[(acc.model == "tiny-0") & (acc.layer == 0)].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, again.accuracy.reset_index(drop=True))


def test_probe_run_varying_labels(tmp_path):
    model = LoadedModel.wrap(tiny_model("qwen2"), tiny_tokenizer(), "tiny-qwen2")
    res = probe_run([model], ["animals", "implicatures"], layers="1", varying="labels", out=tmp_path,
                    max_per_subtask=4)
    acc = res.accuracy
    assert set(acc.probe) == {"all", "labels:can_fly", "labels:implicatures"}
    assert set(acc.target) == {"subtask", "label_space"}
    row = acc[acc.probe == "all"].iloc[0]
    assert row.n == 4 * 5 + 3 * 5 and not np.isnan(row.heldout_acc)  # leave-one-label-space-out
    lab = acc[acc.probe == "labels:can_fly"].iloc[0]
    assert lab.n_classes == 4 and np.isnan(lab.heldout_acc)


def test_cli_probe_on_a_tiny_model_directory(tiny_dir, tmp_path):
    d = tiny_dir("llama")
    out = tmp_path / "cli"
    r = runner.invoke(app, ["probe", "--model", str(d), "--tasks", "adjectives,animals", "--layers", "0,2",
                            "--max-per-subtask", "6", "--folds", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "CV accuracy by layer" in r.output
    acc = pd.read_parquet(out / "probe_accuracy.parquet")
    assert sorted(acc.layer.unique()) == [0, 2]
    bad = runner.invoke(app, ["probe", "--model", str(d), "--tasks", "nope", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "unknown task" in bad.output
    # --no-figures (a study's probe step: the report draws its own figures): the same tables, no figure
    quiet = tmp_path / "no-figures"
    r = runner.invoke(app, ["probe", "--model", str(d), "--tasks", "adjectives,animals", "--layers", "0,2",
                            "--max-per-subtask", "6", "--folds", "3", "--no-figures", "--out", str(quiet)])
    assert r.exit_code == 0, r.output
    assert list(out.glob("figures/*.png")) and not list(quiet.glob("figures/*"))
    for table in ("probe_accuracy", "projections", "similarity", "instructions"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"{table}.parquet"),
                                      pd.read_parquet(quiet / f"{table}.parquet"))


@pytest.mark.slow
def test_probe_smollm2_separates_tasks(tmp_path):
    """SmolLM2-135M-Instruct (30 layers, d=576): IVs of four tasks are linearly separable mid-network,
    also for held-out phrasings, far above the shuffled-label control."""
    res = probe_run(["smollm2-135m-instruct"], ["adjectives", "animals"], layers="0,10,20,29",
                    out=tmp_path, max_per_subtask=40)
    acc = res.accuracy[res.accuracy.probe == "all"].set_index("layer")
    assert acc.loc[20, "cv_mean"] > 0.9 and acc.loc[20, "heldout_acc"] > 0.85
    assert (acc.shuffled_mean < 0.45).all()
