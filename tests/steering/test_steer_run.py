"""run_steer on a tiny model: α = 0 is the unsteered run, the vectors are what their docstring says, a probe run
gives its probe's A-vs-B direction (``probe:``) and its IVs' class-mean difference (``means:``), and a probe run
that lacks the model or a steered layer is refused before a run directory is made."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from ivlens.api import run_probe, run_steer
from ivlens.models.load import load_model
from ivlens.probing import ProbeSpec
from ivlens.probing.collect import load_layer
from ivlens.runs import slug
from ivlens.specs import SpecError
from ivlens.steering import SteerSpec
from ivlens.steering.analysis import compare_with_patching, dose_response
from ivlens.steering.vectors import parse_vectors
from ivlens.testing.tiny import save_tiny_checkpoint


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """The tiny OLMo-2, saved and loaded once for the module: the tests only read it."""
    return load_model(str(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-olmo2"), "olmo2")))


def test_alpha_zero_is_the_target_run_and_vectors_are_unit(lm, tmp_path):
    spec = SteerSpec(models=(lm.path,), subtask="adj_ant", alphas="0,1,3", samples=4, max_per_subtask=6, figures=False)
    res = run_steer(spec, models=[lm], out=tmp_path / "s")
    rows, base = res.sweep.rows, res.sweep.baselines
    zero = rows[rows.alpha == 0].merge(base[base.run == "target"][["sample", "logit", "ia_top1"]], on="sample",
                                       suffixes=("", "_target"))
    np.testing.assert_allclose(zero.logit, zero.logit_target, atol=1e-5)
    assert (zero.delta_logit_vs_target.abs() < 1e-5).all()
    assert (rows[rows.alpha == 3].delta_logit_vs_target.abs() > 1e-4).any()  # steering changes something
    assert len(rows) == 4 * 2 * 3 * lm.n_layers * 3
    saved = load_file(res.run.path / "vectors" / f"{slug(lm.name)}.safetensors")
    torch.testing.assert_close(saved["unit"].norm(dim=-1), torch.ones(2, lm.n_layers), atol=1e-5, rtol=0)
    # mean: the mean IV of adj_ant over its instruction and rephrasings; scale: their mean norm
    labels = pd.read_parquet(res.run.path / "ivs" / slug(lm.name) / "labels.parquet")
    a = (labels.subtask == "adj_ant").to_numpy()
    X = load_layer(res.run.path / "ivs" / slug(lm.name), 2)
    mean = X[a].mean(0)
    torch.testing.assert_close(saved["unit"][0, 2], torch.tensor(mean / np.linalg.norm(mean)), atol=1e-5, rtol=0)
    assert saved["scale"][2].item() == pytest.approx(float(np.linalg.norm(X[a], axis=1).mean()), rel=1e-5)
    dose = dose_response(rows)
    assert set(dose.columns) >= {"ia_top1", "ia_top1_sem", "logit", "acc_top1", "n"} and (dose.n == 4).all()
    # an edit nothing reads (a single position before the last, in the last layer) changes nothing; `all` is read
    unread = rows[~rows.reaches_logits]
    assert (unread.delta_logit_vs_target.abs() < 1e-5).all()
    assert set(unread.layer) <= {lm.n_layers - 1} and set(unread.position) <= {"first"}
    assert rows[rows.position.isin(["all", "last"])].reaches_logits.all()
    flagged = dose[dose.zero_by_construction]
    assert set(flagged.layer) <= {lm.n_layers - 1} and set(flagged.position) <= {"first"}


@pytest.fixture(scope="module")
def probe13(lm, tmp_path_factory):
    """A probe run of the tiny model on both tasks, layers 1 and 3, made once for the module: the tests only read
    it (copy it to change it). Its tables and weights only: figures are result-neutral (``ProbeSpec.figures``) and
    take most of the run's time."""
    spec = ProbeSpec(models=(lm.path,), tasks=("adjectives", "animals"), layers="1,3", max_per_subtask=6, folds=2,
                     figures=False)
    return run_probe(spec, models=[lm], out=tmp_path_factory.mktemp("probe13") / "p").run.path


def _saved_contrast(run, model: str, layer: int, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    """``coef[a] − coef[b]`` and the intercepts' difference of the task probe, read from the files directly."""
    meta = json.loads((run / "probe_weights" / f"{model}.json").read_text())
    classes = meta["probes"]["task:adjectives"]["classes"]
    t = load_file(run / "probe_weights" / f"{model}.safetensors")
    coef, icpt = t[f"probe/task:adjectives/{layer}/coef"], t[f"probe/task:adjectives/{layer}/intercept"]
    i, j = classes.index(a), classes.index(b)
    return (coef[i] - coef[j]).numpy(), (icpt[i] - icpt[j]).numpy()


def test_probe_vector_is_the_probes_class_direction(lm, probe13, tmp_path):
    spec = SteerSpec(models=(lm.path,), subtask="adj_ant", alphas="0,1", samples=2, max_per_subtask=6,
                     layers="1,3", vectors=f"diff,probe:{probe13},means:{probe13}", positions="first", figures=False)
    res = run_steer(spec, models=[lm], out=tmp_path / "s")
    model = slug(lm.name)
    saved = load_file(res.run.path / "vectors" / f"{model}.safetensors")
    unit, scale = saved["unit"].double(), saved["scale"].double()
    ivs = res.run.path / "ivs" / model
    labels = pd.read_parquet(ivs / "labels.parquet")
    is_b = (labels.subtask == "adj_comp").to_numpy()
    for layer in (1, 3):
        w, c = _saved_contrast(probe13, model, layer, "adj_ant", "adj_comp")
        torch.testing.assert_close(unit[1, layer], torch.from_numpy(w / np.linalg.norm(w)), atol=1e-6, rtol=0)
        torch.testing.assert_close(unit[2, layer], unit[0, layer], atol=1e-5, rtol=0)  # means: diff, same IVs
        # α = 1 along it moves B's IVs towards A: the probe's A-vs-B margin rises by s_l · ‖w‖ on every one
        X_b = load_layer(ivs, layer)[is_b].astype(np.float64)
        before = X_b @ w + c
        after = (X_b + scale[layer].item() * unit[1, layer].numpy()) @ w + c
        np.testing.assert_allclose(after - before, scale[layer].item() * np.linalg.norm(w), rtol=1e-5)
        assert (after > before).all()
    for layer in (0, 2):  # not probed: never steered, recorded as zero directions of NaN norm
        assert unit[1:, layer].abs().max() == 0
    vec = res.sweep.vectors.set_index(["vector", "layer"]).raw_norm
    assert np.isnan(vec[(f"probe:{probe13}", 0)])
    assert vec[(f"probe:{probe13}", 3)] == pytest.approx(np.linalg.norm(_saved_contrast(probe13, model, 3, "adj_ant",
                                                                                        "adj_comp")[0]), rel=1e-5)
    rows = res.sweep.rows
    d, p = rows[rows.vector == "diff"], rows[rows.vector == f"means:{probe13}"]
    np.testing.assert_allclose(d.logit.to_numpy(), p.logit.to_numpy(), atol=1e-4)
    steered = rows[(rows.vector == f"probe:{probe13}") & (rows.alpha == 1)]
    assert len(steered) == 2 * 2 and (steered.delta_logit_vs_target.abs() > 1e-4).any()


def test_probe_vector_of_another_model_with_at(lm, probe13, tmp_path):
    """``@MODEL`` takes the direction of the probe run's model of that label (here the same model, renamed)."""
    import shutil

    model = slug(lm.name)
    probes = shutil.copytree(probe13, tmp_path / "p")  # the module's probe run stays as it is
    for ext in ("json", "safetensors"):
        shutil.copy(probes / "probe_weights" / f"{model}.{ext}", probes / "probe_weights" / f"other.{ext}")
    spec = SteerSpec(models=(lm.path,), subtask="adj_ant", alphas="1", samples=1, max_per_subtask=6, layers="3",
                     vectors=f"probe:{probes},probe:{probes}@other", positions="first", figures=False)
    unit = load_file(run_steer(spec, models=[lm], out=tmp_path / "s").run.path / "vectors" / f"{model}.safetensors")
    torch.testing.assert_close(unit["unit"][0], unit["unit"][1])


@pytest.mark.parametrize(("vectors", "layers", "needle"), [
    ("probe:{run}", "2,3", r"--layers: probe:.* has no direction of model .* at layer 2 \(probed layers: 1, 3\); "
                           "give --layers 1,3, or rerun `ivlens probe` with --layers all"),
    ("means:{run}", "0", r"--layers: means:.* at layer 0 \(probed layers: 1, 3\)"),
    ("probe:{run}@absent", "1", r"--vectors probe:.*@absent: .* has no probe of model 'absent'; it has "),
    ("means:{run}@absent", "1", r"--vectors means:.*@absent: .* holds no IVs of model 'absent'"),
])
def test_probe_run_without_the_model_or_layer_is_refused(lm, probe13, tmp_path, vectors, layers, needle):
    spec = SteerSpec(models=(lm.path,), subtask="adj_ant", alphas="1", samples=1, layers=layers,
                     vectors=vectors.format(run=probe13), positions="first", figures=False)
    with pytest.raises((SpecError, ValueError), match=needle) as info:
        run_steer(spec, models=[lm], out=tmp_path / "s")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "s").exists()


def test_a_probe_run_of_an_older_ivlens_is_named(tmp_path):
    (tmp_path / "old" / "ivs").mkdir(parents=True)
    with pytest.raises(SpecError, match="before probe weights were saved: rerun `ivlens probe`"):
        parse_vectors(f"probe:{tmp_path / 'old'}")
    assert parse_vectors(f"means:{tmp_path / 'old'}") == (f"means:{tmp_path / 'old'}",)  # its IVs still serve
    with pytest.raises(SpecError, match="give probe:RUN_DIR or probe:RUN_DIR@MODEL"):
        parse_vectors(f"probe:{tmp_path / 'old'}@")


def test_compare_with_patching_computes_every_column_on_the_paired_samples(caplog):
    """Steering ran 6 queries, patching 4 of them: the best configuration, its IA and accuracy, the paired test and
    ``n`` all use the 4; on all 6, α = 2 would win (IA 0.67 against 0.5)."""
    ia_top1 = {1.0: [1, 1, 1, 0, 0, 0], 2.0: [1, 1, 0, 0, 1, 1]}
    acc = {1.0: [1, 0, 0, 0, 0, 0], 2.0: [0, 0, 0, 0, 1, 1]}
    recs = [{"model": "m", "vector": "mean", "position": "first", "layer": layer, "alpha": a, "sample": i,
             "ia_top1": ia_top1[a][i] if layer == 0 else 0, "acc_top1": acc[a][i] if layer == 0 else 0, "logit": 0.0,
             "delta_logit_vs_target": 0.0} for layer in (0, 1, 2) for a in (1.0, 2.0) for i in range(6)]
    steer = pd.DataFrame(recs)
    patch = pd.DataFrame({"model": "m", "position": "first", "sample": [0, 1, 2, 3] * 3,
                          "layers": ["0"] * 4 + ["1"] * 4 + ["0,1"] * 4, "set_size": [1] * 8 + [2] * 4,
                          "ia_top1": [1] * 12, "acc_top1": [1] * 12})
    c = compare_with_patching(steer, patch).set_index("layer")
    assert (c.n == 4).all()
    # no query in common: no comparison (a warning names the model), never columns on different queries
    with caplog.at_level(logging.WARNING, logger="ivlens.steering.analysis"):
        assert compare_with_patching(steer, patch.assign(sample=patch["sample"] + 100)).empty
    assert "m shares no sample with the patch run" in caplog.text
    assert c.loc[0, "steer_alpha"] == 1.0 and c.loc[0, "steer_ia_top1"] == 0.75
    assert c.loc[0, "steer_acc"] == 0.25 and c.loc[0, "steer_best_acc"] == 0.25
    assert c.loc[0, "diff"] == pytest.approx(-0.25)


def test_compare_with_patching_leaves_an_untested_layer_out_of_the_correction():
    """Layer 2 has no single-layer patch: no test, so its p-values stay NaN, it has no verdict, and the correction
    adjusts the two tested layers only (Holm over 2: the larger p keeps its raw value)."""
    steer = pd.DataFrame({"model": "m", "vector": "mean", "position": "first", "layer": [0] * 4 + [1] * 4 + [2] * 4,
                          "alpha": 1.0, "sample": [0, 1, 2, 3] * 3, "ia_top1": [1, 1, 1, 0] + [0] * 4 + [1] * 4,
                          "acc_top1": 0, "logit": 0.0, "delta_logit_vs_target": 0.0})
    patch = pd.DataFrame({"model": "m", "position": "first", "sample": [0, 1, 2, 3] * 3,
                          "layers": ["0"] * 4 + ["1"] * 4 + ["1,2"] * 4, "set_size": [1] * 8 + [2] * 4,
                          "ia_top1": [1] * 12, "acc_top1": [1] * 12})
    c = compare_with_patching(steer, patch).set_index("layer")
    assert np.isnan(c.loc[2, "p_t"]) and np.isnan(c.loc[2, "p_t_adj"]) and pd.isna(c.loc[2, "verdict"])
    assert c.loc[2, "set_layers"] == "1,2" and c.loc[2, "n"] == 4
    assert c.loc[0, "p_t_adj"] == pytest.approx(c.loc[0, "p_t"])  # rank 2 of a family of 2
    assert c.loc[1, "p_t_adj"] == 0.0 and c.loc[1, "verdict"] == "falls short"
    assert c.loc[0, "verdict"] == "no significant difference"


def test_compare_with_patching_gives_no_verdict_where_the_test_is_undefined():
    """Layer 1 steers to the patch's IA on every sample: every difference is 0, the t-test is undefined, so its p
    is NaN (not 1: "no significant difference" would claim a test), it has no verdict and stays out of Holm's
    family (layer 0 keeps its raw p, a family of 1)."""
    steer = pd.DataFrame({"model": "m", "vector": "mean", "position": "first", "layer": [0] * 4 + [1] * 4,
                          "alpha": 1.0, "sample": [0, 1, 2, 3] * 2, "ia_top1": [1, 1, 1, 0] + [1, 0, 1, 0],
                          "acc_top1": 0, "logit": 0.0, "delta_logit_vs_target": 0.0})
    patch = pd.DataFrame({"model": "m", "position": "first", "sample": [0, 1, 2, 3] * 2,
                          "layers": ["0"] * 4 + ["1"] * 4, "set_size": 1,
                          "ia_top1": [1] * 4 + [1, 0, 1, 0], "acc_top1": [1] * 8})
    c = compare_with_patching(steer, patch).set_index("layer")
    assert c.loc[1, "diff"] == 0.0 and c.loc[1, "n"] == 4
    assert np.isnan(c.loc[1, "p_t"]) and np.isnan(c.loc[1, "p_t_adj"]) and pd.isna(c.loc[1, "verdict"])
    assert c.loc[0, "p_t_adj"] == pytest.approx(c.loc[0, "p_t"])
    assert c.loc[0, "verdict"] == "no significant difference"


def test_compare_with_patching_picks_the_best_and_tests_paired():
    steer = pd.DataFrame({"model": "m", "vector": "mean", "position": "first", "layer": [0] * 8 + [1] * 8,
                          "alpha": [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0] * 2, "sample": [0, 1, 2, 3] * 4,
                          "ia_top1": [0, 0, 0, 0, 1, 1, 1, 0] + [0] * 8,
                          "acc_top1": [1, 1, 0, 0, 1, 0, 0, 0] + [0] * 8, "logit": 0.0,
                          "delta_logit_vs_target": 0.0})
    patch = pd.DataFrame({"model": "m", "position": "first", "sample": [0, 1, 2, 3] * 3,
                          "layers": ["0"] * 4 + ["1"] * 4 + ["0,1"] * 4, "set_size": [1] * 8 + [2] * 4,
                          "ia_top1": [1, 1, 1, 1] + [1, 1, 1, 1] + [1, 1, 1, 0],
                          "acc_top1": [1, 1, 1, 0] + [0, 0, 0, 0] + [1, 0, 0, 0]})
    c = compare_with_patching(steer, patch).set_index("layer")
    assert c.loc[0, "steer_alpha"] == 2.0 and c.loc[0, "steer_ia_top1"] == 0.75
    # accuracy beside IA: the IA-best configuration's (0.25), the best of any configuration at the layer (0.5)
    assert c.loc[0, "steer_acc"] == 0.25 and c.loc[0, "steer_best_acc"] == 0.5
    assert c.loc[0, "patch_acc"] == 0.75 and c.loc[0, "set_acc"] == 0.25
    assert c.loc[0, "patch_ia_top1"] == 1.0 and c.loc[0, "set_ia_top1"] == 0.75 and c.loc[0, "set_layers"] == "0,1"
    assert c.loc[0, "n"] == 4 and c.loc[0, "diff"] == pytest.approx(-0.25)
    assert c.loc[1, "verdict"] == "falls short"  # 0 against 1 on every sample
