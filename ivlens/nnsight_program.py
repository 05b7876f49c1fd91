"""The nnsight programs behind ``--remote``: the same code runs on local weights and on NDIF.

Each function is one nnsight trace over a left-padded batch, run with ``remote=model.remote`` (``True``: on
NDIF; ``False``: here; nnsight's ``"local"``: serialised as for NDIF, then run here with ivlens hidden, which the
tests use to show a program needs nothing from ivlens on the server). The blocks call nothing from ivlens:
only torch operations on envoys and tensors passed in, so the server can rebuild them. Only what a block saves
comes back: one residual vector per (layer, row), or one row of last-position logits.

- :func:`residuals_at`: ``resid_post[l]`` at one column per row, for every requested layer (instruction vectors
  at T_inst for the probes; the sources' IVs of a patch sweep);
- :func:`last_logits`: unpatched last-position logits (the sweep's target-only and instructed baselines);
- :func:`patched_last_logits`: last-position logits of patched rows, ``h[rows, cols] = IV`` at each layer of a
  row's layer set: the patched rows of both ``--remote`` and ``--backend nnsight``
  (:func:`ivlens.patching.nnsight_rows.patched_traces`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ivlens.models.adapters import find_decoder_layers
from ivlens.ndif import NNsightModel
from ivlens.tasks.prompts import Batch


def _layers(model: NNsightModel):
    """The decoder layers' envoys (``model.nn`` mirrors the Hugging Face module tree)."""
    root = model.nn
    for part in find_decoder_layers(model.model)[0].split("."):
        root = getattr(root, part)
    return root


def _inputs(model: NNsightModel, batch: Batch, rows: torch.Tensor | None = None) -> dict:
    """The trace's model inputs (rows ``rows`` of ``batch``, else all) on the model's device: CPU for NDIF (the
    request carries them), the weights' device for local weights (nnsight passes tensors to the module as given)."""
    device = model.device
    pick = (lambda x: x) if rows is None else (lambda x: x[rows.to(x.device)])
    return {"input_ids": pick(batch.input_ids).to(device), "attention_mask": pick(batch.attention_mask).to(device),
            "position_ids": pick(batch.position_ids).to(device), "logits_to_keep": 1}


def residuals_at(model: NNsightModel, batch: Batch, columns: Sequence[int], layers: Sequence[int]) -> torch.Tensor:
    """One trace; the residual after each of ``layers`` at column ``columns[i]`` of row ``i``.

    Returns:
        ``[layer, batch, d_model]`` float32 on CPU, in the order of ``layers``.
    """
    import nnsight

    envoys = _layers(model)
    rows = torch.arange(batch.input_ids.shape[0])
    cols = torch.as_tensor(list(columns), dtype=torch.long)
    saved = []
    nn = model.nn  # the block may reference only nnsight, torch and tensors (no ivlens object)
    with torch.no_grad(), nn.trace(**_inputs(model, batch), remote=model.remote):
        for layer in sorted(layers):  # forward order
            out = envoys[layer].output
            h = out[0] if isinstance(out, tuple) else out  # [batch, pos, d_model]
            saved.append(nnsight.save(h[rows.to(h.device), cols.to(h.device)].detach().float().cpu()))
    by_layer = dict(zip(sorted(layers), saved, strict=True))
    return torch.stack([by_layer[layer] for layer in layers])


def last_logits(model: NNsightModel, batch: Batch) -> torch.Tensor:
    """One trace: the unpatched last-position logits ``[batch, d_vocab]`` (float32, CPU)."""
    import nnsight

    nn = model.nn  # the block may reference only nnsight, torch and tensors (no ivlens object)
    with torch.no_grad(), nn.trace(**_inputs(model, batch), remote=model.remote):
        logits = nnsight.save(nn.output.logits[:, -1].detach().float().cpu())
    return logits


def patched_last_logits(model: NNsightModel, batch: Batch, targets: torch.Tensor,
                        patches: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """One trace over batch rows ``targets`` (a row per patched configuration): at each layer ``l`` of
    ``patches`` (``(rows, columns, vectors)``), ``h[rows, columns] = vectors`` in the residual after layer ``l``;
    returns the last-position logits ``[len(targets), d_vocab]`` (float32, CPU)."""
    import nnsight

    envoys = _layers(model)
    nn = model.nn  # the block may reference only nnsight, torch and tensors (no ivlens object)
    with torch.no_grad(), nn.trace(**_inputs(model, batch, targets), remote=model.remote):
        for layer in sorted(patches):  # forward order
            r_idx, c_idx, vals = patches[layer]
            out = envoys[layer].output
            h = out[0] if isinstance(out, tuple) else out
            h[r_idx.to(h.device), c_idx.to(h.device)] = vals.to(device=h.device, dtype=h.dtype)
        logits = nnsight.save(nn.output.logits[:, -1].detach().float().cpu())
    return logits


def slices(n: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of consecutive slices of ``size`` items (one trace each)."""
    for start in range(0, n, size):
        yield start, min(n, start + size)
