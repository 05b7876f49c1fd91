"""``--remote``: the nnsight programs that run on NDIF, run here (``remote=False``, and nnsight's ``"local"``
simulation of a server without ivlens) against the torch engine and IV collection; the key, the hub-id check,
the refused options, and ``remote=True`` reaching nnsight's trace with the key set. No test contacts a network.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from ivlens.api import run_patch, run_probe
from ivlens.errors import IvlensError
from ivlens.models.load import LoadedModel
from ivlens.ndif import KEY_MESSAGE, RemoteError, local_model, require_hub_id
from ivlens.patching import PatchSpec
from ivlens.patching.sweep import patch_sweep
from ivlens.probing import ProbeSpec
from ivlens.probing.collect import collect_ivs, load_layer
from ivlens.probing.instructions import instruction_set
from ivlens.specs import SpecError
from ivlens.testing.tiny import tiny_model, tiny_tokenizer

KEYS = ["model", "sample", "position", "layers"]


def _tiny(arch: str, seed: int = 0) -> LoadedModel:
    return LoadedModel.wrap(tiny_model(arch, seed=seed, n_layers=4, d_model=64), tiny_tokenizer(), f"tiny-{arch}")


def assert_same_rows(a: pd.DataFrame, b: pd.DataFrame, tol: float = 1e-5) -> None:
    """Same rows in the same order; numbers to ``tol``, the rest exactly."""
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
    for col in a.columns:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if a[col].dtype.kind == "f":
            np.testing.assert_allclose(x, y, atol=tol, rtol=0, err_msg=col)
        else:
            assert (pd.Series(x).fillna("∅") == pd.Series(y).fillna("∅")).all(), col


@pytest.mark.parametrize("arch", ["olmo2", "llama", "qwen2", "gpt2"])
def test_patch_program_equals_torch_engine(arch):
    lm = _tiny(arch)
    kw = dict(layers="pairs", positions="first,last", samples=3, chunk_size=2)
    torch_res = patch_sweep(lm, "adjectives", "adj_ant", **kw)
    nn_res = patch_sweep(local_model(lm), "adjectives", "adj_ant", **kw)
    # --linear-estimate auto: on for pairs on the local engine, off through nnsight (its gradient pass is the engine's)
    linear = [c for c in torch_res.rows.columns if "linear_estimate" in c or "nonlinearity" in c]
    assert len(linear) == 4 and not set(linear) & set(nn_res.rows.columns)
    assert_same_rows(torch_res.rows.drop(columns=linear), nn_res.rows)
    assert_same_rows(torch_res.baselines, nn_res.baselines)
    assert nn_res.stats[lm.name].rows == len(nn_res.rows)


def test_contrastive_source_model_through_the_program():
    a, b = _tiny("olmo2", 0), _tiny("olmo2", 1)
    kw = dict(layers="single", positions="t_inst,last", samples=2, mode="contrastive")
    torch_res = patch_sweep(a, "adjectives", "adj_comp", source_model=b, **kw)
    nn_res = patch_sweep(local_model(a), "adjectives", "adj_comp", source_model=local_model(b), **kw)
    assert_same_rows(torch_res.rows, nn_res.rows)


def test_program_runs_as_on_ndif_without_ivlens_on_the_server():
    """nnsight's ``remote="local"`` serialises each trace as for NDIF and runs it with ivlens hidden."""
    lm = _tiny("olmo2")
    simulated = dataclasses.replace(local_model(lm), remote="local")
    kw = dict(layers="single", positions="last", samples=2)
    assert_same_rows(patch_sweep(lm, "adjectives", "adj_ant", **kw).rows,
                     patch_sweep(simulated, "adjectives", "adj_ant", **kw).rows)


@pytest.mark.parametrize("arch", ["olmo2", "gpt2"])
def test_iv_program_equals_torch_collection(arch, tmp_path):
    lm = _tiny(arch)
    rows = instruction_set(["adjectives", "animals"], "instructions", None, None, 3)
    a = collect_ivs(lm, rows, tmp_path / "torch", batch_size=5)
    b = collect_ivs(local_model(lm), rows, tmp_path / "nnsight", batch_size=5)
    assert a.layers == b.layers == [0, 1, 2, 3]
    for layer in a.layers:
        np.testing.assert_allclose(load_layer(a.path, layer), load_layer(b.path, layer), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- refusals
def test_missing_key_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    for run, spec in ((run_patch, PatchSpec(models=("allenai/OLMo-2-0425-1B",), remote=True)),
                      (run_probe, ProbeSpec(models=("allenai/OLMo-2-0425-1B",), remote=True))):
        with pytest.raises(IvlensError) as e:
            run(spec, out=tmp_path / "run")
        assert str(e.value) == KEY_MESSAGE
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["organism-sft", "smollm2-135m-instruct", "model.gguf", "not-a-hub-id", "{dir}"])
def test_local_models_are_refused(name, tmp_path, monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", "unused")
    name = name.replace("{dir}", str(tmp_path))
    with pytest.raises(RemoteError, match=r"--model .*--remote runs on NDIF, which hosts hub checkpoints only"):
        run_patch(PatchSpec(models=(name,), remote=True), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert require_hub_id("allenai/OLMo-2-0425-1B") == "allenai/OLMo-2-0425-1B"


def test_remote_source_model_must_be_a_hub_id(tmp_path):
    with pytest.raises(RemoteError, match="--source-model 'organism-sft'"):
        from ivlens.ndif import open_remote_models

        open_remote_models(["organism-sft"], option="--source-model")


@pytest.mark.parametrize(("option", "value", "needle"), [
    ("device", "cuda", "--remote cannot honour --device 'cuda'"),
    ("dtype", "bfloat16", "--remote cannot honour --dtype 'bfloat16'"),
    ("gguf_file", "m.gguf", "--remote cannot honour --gguf-file"),
    ("trust_remote_code", True, "--remote cannot honour --trust-remote-code"),
    ("score", "answer", "--remote cannot honour --score 'answer'"),
])
def test_options_remote_cannot_honour(option, value, needle):
    with pytest.raises(SpecError, match=needle):
        PatchSpec(models=("allenai/OLMo-2-0425-1B",), remote=True, **{option: value})


def test_remote_is_hashed_only_when_set():
    local = PatchSpec(models=("m/x",))
    assert "remote" not in local.result_fields() and "remote" not in ProbeSpec(models=("m/x",)).result_fields()
    assert PatchSpec(models=("m/x",), remote=True).hash() != local.hash()
    assert PatchSpec(**local.model_dump()).hash() == local.hash()


# ------------------------------------------------------------------------------------------- remote=True
def test_remote_true_reaches_nnsight_with_the_key(monkeypatch, tmp_path):
    """Everything of a remote run but the network: the hub model is a tiny local one, and nnsight's trace records
    its ``remote`` argument and the configured key, then runs here."""
    import nnsight
    from nnsight.modeling.mixins.remotable import Remotable

    import ivlens.ndif as ndif

    tiny = _tiny("olmo2")
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)  # restored after the test
    monkeypatch.setenv("NDIF_API_KEY", "test-key-123")
    monkeypatch.setattr(ndif, "_transformers_model", lambda name, **kw: _wrap(tiny, name))
    calls = []
    original = Remotable.trace

    def trace(self, *args, remote=False, **kwargs):
        calls.append((remote, nnsight.CONFIG.API.APIKEY))
        return original(self, *args, remote=False, **kwargs)

    monkeypatch.setattr(Remotable, "trace", trace)
    hub = "tiny-org/tiny-olmo2"
    res = run_patch(PatchSpec(models=(hub,), remote=True, layers="single", samples=2, figures=False),
                    out=tmp_path / "patch")
    assert calls and set(calls) == {(True, "test-key-123")}
    expected = patch_sweep(tiny, "adjectives", None, layers="single", samples=2)
    names = ["model", "source_model"]
    assert_same_rows(expected.rows.drop(columns=names), res.sweep.rows.drop(columns=names))
    assert res.run.manifest["models"][0]["remote"] == "ndif"
    assert res.run.manifest["spec"]["remote"] is True

    calls.clear()
    probe = run_probe(ProbeSpec(models=(hub,), remote=True, tasks=("adjectives",), max_per_subtask=4, folds=2,
                                figures=False),
                      out=tmp_path / "probe")
    assert calls and set(calls) == {(True, "test-key-123")}
    assert set(probe.accuracy.layer) == {0, 1, 2, 3}


def _wrap(lm: LoadedModel, name: str):
    """A TransformersModel around local weights that calls itself ``name`` (what nnsight builds from a hub id)."""
    import warnings

    from nnsight import TransformersModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nn = TransformersModel(lm.model, task="text-generation", tokenizer=lm.tokenizer)
    nn.repo_id = name
    return nn


@pytest.mark.cli
def test_dry_run_says_the_compute_runs_on_ndif(capsys, monkeypatch):
    import sys

    from ivlens.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(sys, "argv", ["ivlens", "patch", "--model", "tests/data/olmo2-1124-7b-config", "--layers",
                                      "pairs", "--samples", "3", "--dry-run", "--remote"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "on NDIF" in out and "no local memory or time estimate applies" in out
    assert "time ≈" not in out and "peak memory" not in out
    # 3 samples × 2 positions (first, last) × 528 layer sets (32 single + 496 pairs), 2 baselines per sample, 1 source
    assert "rows 3,168" in out and "forward passes 3,175" in out
