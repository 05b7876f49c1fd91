"""Which patches can reach the scored logits (ivlens.patching.reach), against an independent plain-PyTorch check
(perturb the residual with a forward hook, see whether the last position's logits move), and the summaries that
must not rank a patch whose effect is 0 by construction."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ivlens.patching.interactions import single_layer_effects, strongest_sets, strongest_single_layer
from ivlens.patching.reach import attention_windows, reach, reaches_logits
from ivlens.steering.analysis import best_per_layer, dose_response
from ivlens.testing.tiny import tiny_model

IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 31]])  # 8 tokens, longer than the tiny sliding windows (3)


def test_reach_sums_the_later_windows():
    assert list(reach((None, None, None))) == [math.inf, math.inf, 0]
    assert list(reach((3, 3, 3))) == [4, 2, 0]
    assert list(reach((3, None, 3))) == [math.inf, 2, 0]  # a full layer after the edit carries it anywhere
    # the last layer reads nothing but its own position; an edit of span 2 ending at the last position does
    assert list(reaches_logits((None, None), [1, 1, 0], [6, 6, 0], [8, 8, 8], [1, 2, 1])) == [False, True, True]


@pytest.mark.parametrize("arch", ["llama", "mistral", "gemma2"])  # full attention, all sliding, alternating
def test_reaches_logits_is_what_the_model_computes(arch):
    """Every (layer, position) of an 8-token prompt: the last position's logits move under a perturbation of the
    residual there exactly when reaches_logits says the patch is read (a forward hook on the HF layer, not the
    engine)."""
    model = tiny_model(arch, n_layers=4)
    n_layers, T = len(model.model.layers), IDS.shape[1]
    windows = attention_windows(model, n_layers)
    with torch.no_grad():
        clean = model(IDS).logits[0, -1]
    seen = np.zeros((n_layers, T), dtype=bool)
    for layer in range(n_layers):
        for pos in range(T):
            def bump(_mod, _args, out, pos=pos):
                h = out[0] if isinstance(out, tuple) else out
                h = h.clone()
                h[:, pos] += 5.0 * torch.randn(h.shape[-1], generator=torch.Generator().manual_seed(pos))
                return (h, *out[1:]) if isinstance(out, tuple) else h

            handle = model.model.layers[layer].register_forward_hook(bump)
            try:
                with torch.no_grad():
                    moved = (model(IDS).logits[0, -1] - clean).abs().max().item()
            finally:
                handle.remove()
            seen[layer, pos] = moved > 1e-4
            if not seen[layer, pos]:
                assert moved == 0.0, (layer, pos, moved)  # unread: exactly nothing, not a small effect
    layers, positions = np.meshgrid(np.arange(n_layers), np.arange(T), indexing="ij")
    want = reaches_logits(windows, layers, positions, np.full_like(layers, T))
    np.testing.assert_array_equal(want, seen)
    assert not seen[-1, :-1].any() and seen[-1, -1]  # the last layer: only the last position is read
    if arch == "mistral":  # windows of 3 over 4 layers: the first position is out of reach from layer 0 on
        assert not seen[:, 0].any()


def _rows(first_layer_mean: float = -0.5) -> pd.DataFrame:
    """A patch table of 4 samples, 3 layers, positions first (token 0 of 5) and last: every layer lowers the
    effect except the unread patch (last layer, first position), whose effect is exactly 0."""
    recs = []
    for sample in range(4):
        for position, pos_index in (("first", 0), ("last", 4)):
            for layer in range(3):
                read = not (layer == 2 and position == "first")
                effect = (first_layer_mean + 0.1 * layer + 0.01 * sample) if read else 0.0
                recs.append(dict(model="m", position=position, sample=sample, layers=str(layer), set_size=1,
                                 first_layer=layer, pos_index=pos_index, n_tokens=5, reaches_logits=read,
                                 delta_logit_vs_target=effect, ia_top1=0.5, acc_top1=0.5, acc_space=0.5))
    return pd.DataFrame(recs)


def test_summaries_do_not_crown_a_patch_nothing_reads():
    """Every read patch lowers the effect, so ranking by mean would crown the unread one (mean 0.000 ± 0.000):
    the issue's "strongest single layer <last>" on SmolLM2. It is marked and skipped."""
    rows = _rows()
    singles = single_layer_effects(rows)
    flagged = singles.set_index(["position", "layer"]).zero_by_construction
    assert flagged[("first", 2)] and flagged.sum() == 1
    naive = singles.loc[singles.groupby(["model", "position"])["mean"].idxmax()]
    assert set(zip(naive.position, naive.layer, strict=True)) == {("first", 2), ("last", 2)}  # the old crown
    best = strongest_single_layer(singles)
    assert set(zip(best.position, best.layer, strict=True)) == {("first", 1), ("last", 2)}
    top = strongest_sets(rows, k=10)
    assert not ((top.position == "first") & (top.layers == "2")).any() and len(top) == 5


def test_tables_without_the_column_make_no_claim():
    rows = _rows().drop(columns="reaches_logits")
    assert not single_layer_effects(rows).zero_by_construction.any()
    assert len(strongest_sets(rows, k=10)) == 6


def test_steering_best_skips_unread_edits():
    """An unread steering edit keeps the unsteered ia_top1; when every read edit lowers it, an unread one would be
    "best"."""
    recs = []
    for sample in range(3):
        for position, read, ia_top1 in (("first", False, 0.6), ("last", True, 0.2)):
            for alpha in (1.0, 4.0):
                recs.append(dict(model="m", vector="mean", position=position, layer=3, alpha=alpha, sample=sample,
                                 reaches_logits=read, ia_top1=ia_top1, acc_top1=ia_top1, logit=0.0,
                                 delta_logit_vs_target=0.0))
    dose = dose_response(pd.DataFrame(recs))
    assert dose.set_index("position").zero_by_construction.groupby(level=0).all().to_dict() == {
        "first": True, "last": False}
    best = best_per_layer(dose)
    assert list(best.position) == ["last"]
