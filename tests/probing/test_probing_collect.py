"""The collected IV equals a plain forward hook's read-out at T_inst (tiny models of every architecture,
left-padded batches of prompts of different lengths), and the instruction sets are what the docs say."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from patching_reference import _layers

from ivlens.models.load import LoadedModel
from ivlens.probing.collect import collect_ivs, load_layer, load_layers, parse_layers
from ivlens.probing.instructions import (
    LABEL_FAMILIES,
    InstructionRow,
    instruction_set,
    rewrite_label_space,
)
from ivlens.tasks.prompts import instruction_prompt
from ivlens.testing.tiny import ARCHS, NO_ADAPTER_ARCHS, tiny_model, tiny_tokenizer

TEXTS = [
    "Given an adjective, state its antonym.",
    "State the antonym for any adjective supplied.",
    "Given an animal, state whether or not it can fly. Print 'yes' or 'no'.",
    "Provide the opposite.",
    "For the given sentence, count the number of objects listed and print it as a digit.",
]


def _rows(texts):
    return [InstructionRow("t", f"s{i % 2}", t, "rephrasing", i, "train") for i, t in enumerate(texts)]


def _plain_hook_readout(model, layer_module, ids: list[int], t_inst: int) -> torch.Tensor:
    """Residual after ``layer_module`` at ``t_inst`` of one unpadded prompt, from a bare forward hook."""
    got = {}

    def hook(_m, _i, out):
        got["h"] = (out[0] if isinstance(out, tuple) else out)[0, t_inst].detach().clone()

    h = layer_module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]))
    finally:
        h.remove()
    return got["h"]


@pytest.mark.parametrize("arch", ARCHS + NO_ADAPTER_ARCHS)
@pytest.mark.parametrize("fmt", ["raw", "chat"])
def test_collected_iv_equals_plain_hook_at_t_inst(arch, tmp_path, fmt):
    """Every family, and a class without an adapter (IV collection needs none)."""
    model = tiny_model(arch, n_kv_heads=None if arch in ("gpt2", "gpt_neox") else 2)
    tok = tiny_tokenizer()
    loaded = LoadedModel.wrap(model, tok, f"tiny-{arch}")
    store = collect_ivs(loaded, _rows(TEXTS), tmp_path / "ivs", batch_size=3, fmt=fmt)  # 2 batches, left-padded
    labels = store.labels()
    assert len(set(labels.n_tokens)) > 1  # the batches really are padded
    layers = _layers(model)  # found without ivlens
    assert loaded.n_layers == len(layers) == 4
    for layer in range(loaded.n_layers):
        X = store.load_layer(layer)
        assert X.shape == (len(TEXTS), loaded.d_model) and X.dtype == np.float32
        for i, text in enumerate(TEXTS):
            p = instruction_prompt(tok, text, fmt)
            ref = _plain_hook_readout(model, layers[layer], list(p.input_ids), p.t_inst)
            torch.testing.assert_close(torch.from_numpy(X[i]), ref.float(), atol=2e-5, rtol=1e-4)


def test_collect_layer_subset_and_resume(tmp_path):
    loaded = LoadedModel.wrap(tiny_model("llama"), tiny_tokenizer(), "tiny")
    layers = parse_layers("0,-1", loaded.n_layers)
    assert layers == [0, 3]
    store = collect_ivs(loaded, _rows(TEXTS), tmp_path, layers=layers, batch_size=2)
    assert store.layers == [0, 3] and len(store.unit_files()) == 3
    X3 = load_layer(tmp_path, 3)
    assert X3.shape == (len(TEXTS), loaded.d_model)
    np.testing.assert_array_equal(load_layers(tmp_path, [3, 0]), np.stack([X3, load_layer(tmp_path, 0)]))
    with pytest.raises(KeyError, match="not collected"):
        load_layer(tmp_path, 1)
    # resume keeps existing shards and recomputes only missing ones
    store.unit_files()[1].unlink()
    again = collect_ivs(loaded, _rows(TEXTS), tmp_path, layers=layers, batch_size=2, resume=True)
    np.testing.assert_array_equal(again.load_layer(3), X3)
    with pytest.raises(ValueError, match="out of range"):
        parse_layers("9", 4)


def test_instruction_sets_and_splits():
    rows = instruction_set(["adjectives"])
    by = {s: [r for r in rows if r.subtask == s] for s in ("adj_comp", "adj_ant")}
    for rs in by.values():
        assert len(rs) == 201 and rs[0].source == "main" and rs[0].split == "train"
        assert sum(r.split == "heldout" for r in rs) == 50  # last quarter of the 200 rephrasings
        assert all(r.split == "heldout" for r in rs[-50:])
    # an organism card's held-out phrasings override the default split
    held = {"adj_comp": {by["adj_comp"][1].instruction}}
    rows2 = instruction_set(["adjectives"], heldout=held)
    assert sum(r.split == "heldout" for r in rows2 if r.subtask == "adj_comp") == 1
    small = instruction_set(["animals"], max_per_subtask=8)
    assert len(small) == 2 * 9 and sum(r.split == "heldout" for r in small) == 2 * 2


def test_label_variants_rewrite_only_the_label_space():
    fam = LABEL_FAMILIES["can_fly"]
    text = "Say 'yes' or 'no' depending on whether the animal can fly."
    assert rewrite_label_space(text, fam, fam.variants[1]) == "Say 'Y' or 'N' depending on whether the animal can fly."
    fam = LABEL_FAMILIES["implicatures"]
    assert rewrite_label_space("Judge the reply.", fam, fam.variants[1]) == "Judge the reply. Print T for yes and F for no."
    rows = instruction_set(["animals", "implicatures"], varying="labels", max_per_subtask=4)
    assert {r.subtask for r in rows} == {"can_fly", "implicatures"}  # anim_color has no label space
    can = [r for r in rows if r.subtask == "can_fly"]
    assert [r.variant for r in can[::5]] == ["yes/no", "Y/N", "true/false", "1/0"]
    assert all("'Y'" in r.instruction for r in can if r.variant == "Y/N")
