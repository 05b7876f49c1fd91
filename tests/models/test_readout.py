"""The one residual read-out (:mod:`ivlens.models.adapters.readout`): what patching's source IVs, the probes' and
steering's IVs, the logit lens and the tracer read ``resid_post[l]`` with, and its nnsight twin
(:func:`ivlens.nnsight_program.residuals_at`). Its values against a plain forward hook are checked for every family
in ``tests/probing/test_probing_collect.py``; here, that every reader gets the same numbers from it."""

from __future__ import annotations

import pytest
import torch
from patching_reference import _layers

from ivlens.models.adapters import capture_resid, resid_at
from ivlens.models.load import LoadedModel
from ivlens.ndif import local_model
from ivlens.nnsight_program import residuals_at
from ivlens.patching.engine import source_vectors
from ivlens.probing.collect import read_resid
from ivlens.tasks.prompts import instruction_prompt, pad_left
from ivlens.testing.tiny import ARCHS, NO_ADAPTER_ARCHS, tiny_model, tiny_tokenizer

TEXTS = ["Given an adjective, state its antonym.", "Provide the opposite.",
         "For the given sentence, count the number of objects listed and print it as a digit."]


def _loaded(arch: str) -> LoadedModel:
    return LoadedModel.wrap(tiny_model(arch, n_layers=3, d_model=32), tiny_tokenizer(), f"tiny-{arch}")


def _one(p):
    """``input_ids, attention_mask, position_ids`` of one unpadded prompt, ``[1, pos]`` each."""
    return torch.tensor([p.input_ids]), torch.ones(1, len(p), dtype=torch.long), torch.arange(len(p))[None]


def _batch(lm: LoadedModel):
    prompts = [instruction_prompt(lm.tokenizer, t) for t in TEXTS]
    batch = pad_left(prompts, lm.tokenizer.pad_token_id)
    return batch, [batch.column(j, p.t_inst) for j, p in enumerate(prompts)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", ["olmo2", "gpt2", "gemma2", *NO_ADAPTER_ARCHS])
def test_columns_are_the_whole_capture_at_those_columns(arch, dtype):
    """``columns`` keeps exactly the whole residual's entries there (on CPU, in the model's dtype), on any causal
    LM, adapter or not; the hooks are gone afterwards."""
    lm = _loaded(arch)
    lm.model.to(dtype)
    batch, cols = _batch(lm)
    blocks = _layers(lm.model)  # found without ivlens
    with torch.no_grad(), capture_resid(blocks) as whole:
        lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    got = resid_at(lm.model, blocks, batch.input_ids, batch.attention_mask, batch.position_ids, cols, [2, 0])
    assert got.shape == (2, len(TEXTS), lm.d_model) and got.dtype == dtype and got.device.type == "cpu"
    rows = torch.arange(len(TEXTS))
    for k, layer in enumerate([2, 0]):
        assert torch.equal(got[k], whole[layer][rows, torch.tensor(cols)])
    assert read_resid(lm, batch, cols, [2, 0]).dtype == torch.float32  # what the IV stores keep
    assert all(not b._forward_hooks for b in blocks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("arch", ARCHS)
def test_patching_source_ivs_are_the_probes_ivs(arch, dtype):
    """A patch sweep's source IV and the IV the probes and steering collect for the same instruction are one
    read-out: equal to the last bit (the source IVs in the model's dtype, float64 included)."""
    lm = _loaded(arch)
    lm.model.to(dtype)
    p = instruction_prompt(lm.tokenizer, TEXTS[0])
    assert p.t_inst == len(p) - 1
    layers = list(range(lm.n_layers))
    probe_iv = read_resid(lm, pad_left([p], lm.tokenizer.pad_token_id), [p.t_inst], layers)[:, 0]  # [layer, d_model]
    patch_iv = source_vectors(lm.adapter, [p.input_ids], lm.tokenizer.pad_token_id)[0]
    assert patch_iv.dtype == dtype and torch.equal(patch_iv.float(), probe_iv)
    raw = resid_at(lm.model, lm.layers, *_one(p), [p.t_inst], layers)[:, 0]
    assert torch.equal(patch_iv, raw)


@pytest.mark.parametrize("arch", ["olmo2", "gpt2"])
def test_nnsight_read_out_equals_the_hook_read_out(arch):
    """The nnsight program (``--remote``, run here) and the hooks read the same residuals from one left-padded
    batch; :func:`read_resid` picks the program for an nnsight model."""
    lm = _loaded(arch)
    batch, cols = _batch(lm)
    hooks = read_resid(lm, batch, cols, [1, 0, 2])
    program = residuals_at(local_model(lm), batch, cols, [1, 0, 2])
    torch.testing.assert_close(program, hooks, rtol=0, atol=1e-6)
    torch.testing.assert_close(read_resid(local_model(lm), batch, cols, [1, 0, 2]), program, rtol=0, atol=0)
