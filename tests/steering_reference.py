"""Naive, independent reference for steering: a plain PyTorch forward hook that adds a vector to a decoder
layer's output on the unmodified HF model, one full forward per configuration, one prompt at a time (no padding,
no caches, no batching). Used only by the tests, to check the engine's additive edits."""

from __future__ import annotations

import torch
from patching_reference import edited_layers, run_logits


@torch.no_grad()
def steered_logits(model, target_ids, vectors, layers, positions) -> torch.Tensor:
    """Last-position logits ``[d_vocab]`` of the target with ``vectors[l]`` (``[d_model]``) added at every token of
    ``positions`` after each layer ``l`` in ``layers``."""
    idx = torch.tensor(list(positions))

    def add(t, layer):
        t[0, idx] += vectors[layer]

    with edited_layers(model, layers, add):
        return run_logits(model, target_ids)
