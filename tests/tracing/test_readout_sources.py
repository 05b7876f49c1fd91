"""Where a read-out's direction comes from: saved probes (standardisation folded in), LDA axes, class means, user
vectors; ``--position``; and ``ivlens trace --readout`` end to end on a tiny probe run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ivlens.models.adapters import resid_at
from ivlens.models.load import LoadedModel
from ivlens.probing import probe_run
from ivlens.probing.probes import LogisticProbe, lda_project
from ivlens.probing.weights import (
    ProbeWeights,
    ProbeWeightsError,
    class_mean_difference,
    contrast_row,
    lda_direction,
    probe_contrast,
    probe_direction,
)
from ivlens.tasks import instruction_prompt, load_task
from ivlens.testing.tiny import tiny_model, tiny_tokenizer
from ivlens.tracing.readout import ReadoutError, load_direction, parse_readout, resolve_position


def _blobs(n: int = 40, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], n)
    X = rng.normal(size=(3 * n, d)) * rng.uniform(0.5, 5, d) + 3.0 + np.eye(3, d)[y] * 4
    return X.astype(np.float32), y


def test_saved_probe_is_the_pre_activation_logit_on_raw_ivs(tmp_path):
    """coef[c] · x + intercept[c] equals the probe's standardised logit W_s[c] · (x − μ)/σ + b_s[c]."""
    X, y = _blobs()
    fitted = LogisticProbe().fit(X, y)
    w = ProbeWeights("m", X.shape[1])
    w.add_probe("all", "subtask", ["a", "b", "c"], 2, fitted)
    w.write(tmp_path, "m")
    d = probe_direction(tmp_path, "m", 2, "b")
    logits = X.astype(np.float64) @ d.vector + d.intercept
    np.testing.assert_allclose(logits, fitted.decision_function(X)[:, 1], rtol=1e-10, atol=1e-10)
    # and the standardised form the probe was fitted in
    Ws = fitted.coef_ * fitted.scale_
    bs = fitted.intercept_ + fitted.coef_ @ fitted.mean_
    np.testing.assert_allclose(logits, ((X - fitted.mean_) / fitted.scale_) @ Ws[1] + bs[1], rtol=1e-9, atol=1e-9)
    assert d.probe == "all" and d.classes == ("a", "b", "c")
    with pytest.raises(ProbeWeightsError, match="layer 3 was not probed.*probed: 2"):
        probe_direction(tmp_path, "m", 3, "b")
    with pytest.raises(ProbeWeightsError, match="class 'z' is not a class.*a, b, c"):
        probe_direction(tmp_path, "m", 2, "z")
    with pytest.raises(ProbeWeightsError, match="no probe of model 'other'.*has m"):
        probe_direction(tmp_path, "other", 2, "b")
    assert not any(p.suffix in (".pkl", ".pickle") for p in tmp_path.rglob("*"))


def test_probe_contrast_is_the_a_vs_b_margin(tmp_path):
    """coef[a] − coef[b] with the intercepts' difference is logit a − logit b; moving along it raises that margin at
    the rate of its norm; a single-row binary probe gives its row with a's sign."""
    X, y = _blobs()
    fitted = LogisticProbe().fit(X, y)
    w = ProbeWeights("m", X.shape[1])
    w.add_probe("all", "subtask", ["a", "b", "c"], 2, fitted)
    w.add_probe("task:t", "subtask", ["a", "c"], 2, LogisticProbe().fit(X[y != 1], y[y != 1]))
    w.write(tmp_path, "m")
    d = probe_contrast(tmp_path, "m", 2, "c", "a")
    assert d.probe == "task:t" and d.classes == ("a", "c")  # the most specific probe knowing both
    d = probe_contrast(tmp_path, "m", 2, "a", "b")
    assert d.probe == "all"
    logits = fitted.decision_function(X)
    np.testing.assert_allclose(X.astype(np.float64) @ d.vector + d.intercept, logits[:, 0] - logits[:, 1], atol=1e-9)
    u = d.vector / np.linalg.norm(d.vector)
    moved = fitted.decision_function(X + 3.0 * u)
    np.testing.assert_allclose((moved[:, 0] - moved[:, 1]) - (logits[:, 0] - logits[:, 1]),
                               3.0 * np.linalg.norm(d.vector), rtol=1e-9)
    with pytest.raises(ProbeWeightsError, match="class 'z' is not a class"):
        probe_contrast(tmp_path, "m", 2, "a", "z")
    with pytest.raises(ProbeWeightsError, match="layer 1 was not probed.*probed: 2"):
        probe_contrast(tmp_path, "m", 1, "a", "b")
    row, c = np.arange(4.0), 0.5
    for a, b, sign in (("p", "q", -1), ("q", "p", 1)):  # sklearn's binary row: logit of classes[1] vs classes[0]
        v, k = contrast_row(row[None], np.array([c]), ["p", "q"], a, b)
        np.testing.assert_array_equal(v, sign * row)
        assert k == sign * c


def test_lda_axis_is_affine_in_the_ivs():
    X, y = _blobs(d=80)
    Z, _, axis = lda_project(X.astype(np.float64), y)
    proj = X.astype(np.float64) @ axis
    np.testing.assert_allclose(Z[:, 0] - proj, np.full(len(X), (Z[:, 0] - proj).mean()), atol=1e-8)


@pytest.mark.parametrize(("text", "expected"), [
    ("probe:runs/p:3:adj_ant", ("probe", "runs/p", 3, "adj_ant", None)),
    ("probe:runs/p:-1", ("probe", "runs/p", -1, None, None)),
    ("probe:C:/x/p:2:adj_ant@sft", ("probe", "C:/x/p", 2, "adj_ant", "sft")),
    ("means:p:1:adj_ant-adj_comp", ("means", "p", 1, "adj_ant-adj_comp", None)),
    ("lda:p:4@base", ("lda", "p", 4, None, "base")),
    ("vector:w.npy:2", ("vector", "w.npy", 2, None, None)),
])
def test_parse_readout(text, expected):
    s = parse_readout(text)
    assert (s.kind, s.path, s.layer, s.cls, s.model) == expected


@pytest.mark.parametrize(("text", "needle"), [
    ("logit:x:3", "not a read-out"), ("probe:p:adj_ant", "no LAYER"), ("vector:w.pkl:1", "never a pickle"),
    ("means:p:1:adj_ant", "A-B"), ("probe:p:3@", "@MODEL is empty")])
def test_parse_readout_refuses(text, needle):
    with pytest.raises(ReadoutError, match=needle):
        parse_readout(text)


def test_positions():
    assert resolve_position("last", 12, 4) == 11
    assert resolve_position("t_inst", 12, 4) == 4
    assert resolve_position("-2", 12, None) == 10
    with pytest.raises(ReadoutError, match="--position 12 is past the prompt of 12 tokens"):
        resolve_position("12", 12, 4)
    with pytest.raises(ReadoutError, match="--position t_inst: this prompt has no instruction"):
        resolve_position("t_inst", 12, None)


def test_user_vectors_load_safely(tmp_path):
    from safetensors.numpy import save_file

    np.save(tmp_path / "w.npy", np.arange(8.0))
    d = load_direction(parse_readout(f"vector:{tmp_path / 'w.npy'}:-1"), model="m", d_model=8, n_layers=3)
    assert d.layer == 2 and torch.equal(d.vector, torch.arange(8.0, dtype=torch.float64))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ReadoutError, match="not a plain .npy"):
        load_direction(parse_readout(f"vector:{tmp_path / 'obj.npy'}:1"), model="m", d_model=8, n_layers=3)
    save_file({"a": np.ones(8), "b": np.zeros(8)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ReadoutError, match="2 tensors.*#KEY"):
        load_direction(parse_readout(f"vector:{tmp_path / 'two.safetensors'}:1"), model="m", d_model=8, n_layers=3)
    d = load_direction(parse_readout(f"vector:{tmp_path / 'two.safetensors'}#a:1"), model="m", d_model=8, n_layers=3)
    assert float(d.vector.sum()) == 8
    with pytest.raises(ReadoutError, match="d_model is 9: give a vector of 9 numbers"):
        load_direction(parse_readout(f"vector:{tmp_path / 'w.npy'}:1"), model="m", d_model=9, n_layers=3)


@pytest.fixture(scope="module")
def tiny_probe(tmp_path_factory):
    """A probe run of one tiny OLMo-2 on both tasks' rephrasings, layers 1 and 3 (no figures: the readouts read its
    weights and IVs)."""
    lm = LoadedModel.wrap(tiny_model("olmo2", seed=0), tiny_tokenizer(), "tiny")
    out = tmp_path_factory.mktemp("probe") / "run"
    probe_run([lm], ["adjectives", "animals"], layers="1,3", out=out, max_per_subtask=6, figures=False)
    return lm, out


def test_probe_run_saves_weights_and_means(tiny_probe):
    lm, run = tiny_probe
    meta = json.loads((run / "probe_weights" / "tiny.json").read_text())
    assert meta["layers"] == [1, 3] and set(meta["probes"]) == {"all", "task:adjectives", "task:animals"}
    d = probe_direction(run, "tiny", 3, "adj_ant")
    assert d.probe == "task:adjectives"  # the most specific probe that knows the class
    assert lda_direction(run, "tiny", 1).vector.shape == (64,)
    m = load_direction(parse_readout(f"means:{run}:1:adj_ant-adj_comp"), model="tiny", d_model=64, n_layers=4)
    m2 = load_direction(parse_readout(f"means:{run}:1"), model="tiny", d_model=64, n_layers=4,
                        subtask="adj_ant", other="adj_comp")
    torch.testing.assert_close(m.vector, m2.vector)
    np.testing.assert_array_equal(m.vector.numpy(), class_mean_difference(run, "tiny", 1, "adj_ant", "adj_comp").vector)
    with pytest.raises(ProbeWeightsError, match="layer 2 was not probed"):
        load_direction(parse_readout(f"means:{run}:2:adj_ant-adj_comp"), model="tiny", d_model=64, n_layers=4)
    with pytest.raises(ProbeWeightsError, match="no IVs of model 'other'.*models: tiny"):
        load_direction(parse_readout(f"means:{run}:1@other"), model="tiny", d_model=64, n_layers=4,
                       subtask="adj_ant", other="adj_comp")


def test_trace_readout_equals_the_probe_on_the_collected_iv(tiny_probe, tmp_path):
    """End to end: the traced value at T_inst of a task prompt is w · IV, the IV as ``ivlens probe`` collects it
    (same residual definition, same T_inst), and completeness holds; the run writes the component table."""
    from ivlens.api import run_trace
    from ivlens.tracing import TraceSpec

    lm, run = tiny_probe
    spec = TraceSpec(models=("tiny",), task="adjectives", subtask="adj_ant", sample=2,
                     readout=f"probe:{run}:3", position="t_inst")
    res = run_trace(spec, models=[lm], out=tmp_path / "trace")
    tr = res.traces[0]
    g = tr.result.full_graph
    assert g.completeness_rel_err < 1e-4 and g.n_layers == 4
    assert tr.readout["cls"] == "adj_ant" and tr.readout["pos"] == tr.t_inst == len(tr.result.sur.tokens) - 1
    task = load_task("adjectives")
    p = instruction_prompt(lm.tokenizer, task.subtask("adj_ant").instruction)
    iv = resid_at(lm.model, lm.layers, torch.tensor([p.input_ids]), torch.ones(1, len(p)), torch.arange(len(p))[None],
                  [p.t_inst], [3])[0, 0]
    d = probe_direction(run, "tiny", 3, "adj_ant")
    assert g.real == pytest.approx(float(iv.double() @ torch.from_numpy(d.vector)), rel=1e-5, abs=1e-6)
    import pandas as pd

    comp = pd.read_parquet(tmp_path / "trace" / "readout_components.parquet")
    assert set(comp.component) >= {"head", "mlp", "embed"} and comp.layer.max() == 3
    # per layer, the heads' rows sum to the graph's head edges of that layer
    for layer in range(4):
        heads = comp[(comp.component == "head") & (comp.layer == layer)].value.sum()
        assert heads == pytest.approx(float(g.head[layer].sum()), rel=1e-5, abs=1e-6)
    manifest = json.loads((tmp_path / "trace" / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["readout"]["tiny"]["layer"] == 3
