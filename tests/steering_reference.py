"""Naive, independent reference for steering: a plain PyTorch forward hook that adds a vector to a decoder
layer's output on the unmodified HF model, one full forward per configuration, one prompt at a time (no padding,
no caches, no batching). Used only by the tests, to check the engine's additive edits."""

from __future__ import annotations

import torch
from patching_reference import _layers, run_logits


@torch.no_grad()
def steered_logits(model, target_ids, vectors, layers, positions) -> torch.Tensor:
    """Last-position logits ``[d_vocab]`` of the target with ``vectors[l]`` (``[d_model]``) added at every token of
    ``positions`` after each layer ``l`` in ``layers``."""
    idx = torch.tensor(list(positions))
    handles = []
    for layer_idx in layers:
        def hook(_m, _inp, o, layer_idx=layer_idx):
            t = o[0] if isinstance(o, tuple) else o
            t = t.clone()
            t[0, idx] = t[0, idx] + vectors[layer_idx]
            return (t, *o[1:]) if isinstance(o, tuple) else t
        handles.append(_layers(model)[layer_idx].register_forward_hook(hook))
    try:
        return run_logits(model, target_ids)
    finally:
        for h in handles:
            h.remove()
