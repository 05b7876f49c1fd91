"""Naive, independent reference for layer patching: plain PyTorch forward hooks on the unmodified HF model,
one full forward per layer set and position, one prompt at a time (no padding, no caches, no batching).

Used only by the tests, to check :mod:`ivlens.patching.engine` and :func:`ivlens.patching.sweep.patch_sweep`.
"""

from __future__ import annotations

import torch


def _layers(model):
    """The decoder blocks: the model's ``nn.ModuleList`` of ``num_hidden_layers`` modules (``model.layers``,
    ``transformer.h``, ``gpt_neox.layers``, ...), found without ivlens."""
    n = model.config.num_hidden_layers
    return next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n)


@torch.no_grad()
def run_logits(model, ids) -> torch.Tensor:
    """Last-position logits ``[d_vocab]`` of one unpadded prompt."""
    return model(input_ids=torch.tensor([list(ids)])).logits[0, -1]


@torch.no_grad()
def source_ivs(model, ids) -> list[torch.Tensor]:
    """Output of every decoder layer at the last token, via forward hooks: ``n_layers`` tensors ``[d_model]``."""
    out: dict[int, torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(_layers(model)):
        def hook(_m, _inp, o, i=i):
            o = o[0] if isinstance(o, tuple) else o
            out[i] = o[0, -1].clone()
        handles.append(layer.register_forward_hook(hook))
    try:
        model(input_ids=torch.tensor([list(ids)]))
    finally:
        for h in handles:
            h.remove()
    return [out[i] for i in range(len(out))]


@torch.no_grad()
def patched_logits(model, target_ids, ivs, layers, token) -> torch.Tensor:
    """Last-position logits ``[d_vocab]`` of the target with ``ivs[l]`` written at ``token`` after each layer
    ``l`` in ``layers`` (a forward hook replacing the layer's output)."""
    handles = []
    for layer_idx in layers:
        def hook(_m, _inp, o, layer_idx=layer_idx):
            t = o[0] if isinstance(o, tuple) else o
            t = t.clone()
            t[0, token] = ivs[layer_idx]
            return (t, *o[1:]) if isinstance(o, tuple) else t
        handles.append(_layers(model)[layer_idx].register_forward_hook(hook))
    try:
        return run_logits(model, target_ids)
    finally:
        for h in handles:
            h.remove()


def label_metrics(logits: torch.Tensor, label: int) -> dict[str, float]:
    """logit, probability, rank (1 + #strictly larger logits) and reciprocal rank, written out plainly."""
    logit = float(logits[label])
    prob = float(torch.softmax(logits.double(), -1)[label])
    rank = 1 + int((logits > logits[label]).sum())
    return {"logit": logit, "prob": prob, "rank": rank, "rr": 1.0 / rank}
