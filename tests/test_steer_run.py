"""run_steer on a tiny model: α = 0 is the unsteered run, the vectors are what their docstring says, and a probe
run's IVs give the class-mean difference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from ivlens.api import run_probe, run_steer
from ivlens.models.load import load_model
from ivlens.probing.collect import load_layer
from ivlens.probing.run import model_slug
from ivlens.specs import ProbeSpec, SteerSpec
from ivlens.steering.analysis import compare_with_patching, dose_response


@pytest.fixture
def lm(tiny_dir):
    return load_model(str(tiny_dir("olmo2")))


def test_alpha_zero_is_the_target_run_and_vectors_are_unit(lm, tmp_path):
    spec = SteerSpec(models=(lm.path,), subtask="adj_ant", alphas="0,1,3", samples=4, max_per_subtask=6, figures=False)
    res = run_steer(spec, models=[lm], out=tmp_path / "s")
    rows, base = res.sweep.rows, res.sweep.baselines
    zero = rows[rows.alpha == 0].merge(base[base.run == "target"][["sample", "logit", "ia"]], on="sample",
                                       suffixes=("", "_target"))
    np.testing.assert_allclose(zero.logit, zero.logit_target, atol=1e-5)
    assert (zero.delta_logit_vs_target.abs() < 1e-5).all()
    assert (rows[rows.alpha == 3].delta_logit_vs_target.abs() > 1e-4).any()  # steering changes something
    assert len(rows) == 4 * 2 * 3 * lm.n_layers * 3
    saved = load_file(res.run.path / "vectors" / f"{model_slug(lm.name)}.safetensors")
    torch.testing.assert_close(saved["unit"].norm(dim=-1), torch.ones(2, lm.n_layers), atol=1e-5, rtol=0)
    # mean: the mean IV of adj_ant over its instruction and rephrasings; scale: their mean norm
    labels = pd.read_parquet(res.run.path / "ivs" / model_slug(lm.name) / "labels.parquet")
    a = (labels.subtask == "adj_ant").to_numpy()
    X = load_layer(res.run.path / "ivs" / model_slug(lm.name), 2)
    mean = X[a].mean(0)
    torch.testing.assert_close(saved["unit"][0, 2], torch.tensor(mean / np.linalg.norm(mean)), atol=1e-5, rtol=0)
    assert saved["scale"][2].item() == pytest.approx(float(np.linalg.norm(X[a], axis=1).mean()), rel=1e-5)
    dose = dose_response(rows)
    assert set(dose.columns) >= {"ia", "ia_sem", "logit", "acc_top1", "n"} and (dose.n == 4).all()


def test_probe_vector_is_the_class_mean_difference(lm, tmp_path):
    probe = run_probe(ProbeSpec(models=(lm.path,), tasks=("adjectives", "animals"), max_per_subtask=6, folds=2),
                      models=[lm], out=tmp_path / "p")
    spec = SteerSpec(models=(lm.path,), alphas="1", samples=2, max_per_subtask=6, layers="1",
                     vectors=f"diff,probe:{probe.run.path}", positions="first", figures=False)
    res = run_steer(spec, models=[lm], out=tmp_path / "s")
    unit = load_file(res.run.path / "vectors" / f"{model_slug(lm.name)}.safetensors")["unit"]
    torch.testing.assert_close(unit[1], unit[0], atol=1e-5, rtol=0)  # the same instructions: the same direction
    rows = res.sweep.rows
    d, p = rows[rows.vector == "diff"], rows[rows.vector != "diff"]
    np.testing.assert_allclose(d.logit.to_numpy(), p.logit.to_numpy(), atol=1e-4)


def test_compare_with_patching_picks_the_best_and_tests_paired():
    steer = pd.DataFrame({"model": "m", "vector": "mean", "position": "first", "layer": [0] * 8 + [1] * 8,
                          "alpha": [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0] * 2, "sample": [0, 1, 2, 3] * 4,
                          "ia": [0, 0, 0, 0, 1, 1, 1, 0] + [0] * 8, "acc_top1": 0.0, "logit": 0.0,
                          "delta_logit_vs_target": 0.0})
    patch = pd.DataFrame({"model": "m", "position": "first", "sample": [0, 1, 2, 3] * 3,
                          "layers": ["0"] * 4 + ["1"] * 4 + ["0,1"] * 4, "set_size": [1] * 8 + [2] * 4,
                          "ia": [1, 1, 1, 1] + [1, 1, 1, 1] + [1, 1, 1, 0]})
    c = compare_with_patching(steer, patch).set_index("layer")
    assert c.loc[0, "steer_alpha"] == 2.0 and c.loc[0, "steer_ia"] == 0.75
    assert c.loc[0, "patch_ia"] == 1.0 and c.loc[0, "set_ia"] == 0.75 and c.loc[0, "set_layers"] == "0,1"
    assert c.loc[0, "n"] == 4 and c.loc[0, "diff"] == pytest.approx(-0.25)
    assert c.loc[1, "verdict"] == "falls short"  # 0 against 1 on every sample
