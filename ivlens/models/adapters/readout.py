"""The residual read-out: ``resid_post[l]``, the output of decoder block ``l``, recorded with plain forward hooks.

The one place ivlens reads the residual stream of a Hugging Face model with hooks. It needs no architecture
adapter (only the decoder blocks, :func:`~.derive.find_decoder_layers`), so it works on any causal LM:

- :func:`capture_resid`: hooks for one forward the caller runs; whole positions ``[batch, pos, d_model]`` (the
  tracer's surrogate, :meth:`ArchitectureAdapter.capture_resid <ivlens.models.adapters.ArchitectureAdapter.capture_resid>`)
  or one column per row ``[batch, d_model]``;
- :func:`resid_at`: one forward, one column per row, every requested layer: the instruction vectors (IVs) of the
  probes, steering directions and logit lens (at T_inst, :mod:`ivlens.probing.collect`) and the sources' IVs of a
  patch sweep (at the last token, :func:`ivlens.patching.engine.source_vectors`), so patching and steering read
  the same IV with the same code.

Its nnsight counterpart, the same read-out as one nnsight trace (``--remote`` and local nnsight models), is
:func:`ivlens.nnsight_program.residuals_at` (the same arguments; float32 result);
:func:`ivlens.probing.collect.read_resid` picks one of the two for a loaded model.

Never read residuals from ``output_hidden_states``: its last entry is after the final norm.

Shapes: ``layer batch pos d_model``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .derive import resid_from_output


@contextmanager
def capture_resid(blocks: nn.ModuleList, layers: Sequence[int] | None = None,
                  columns: torch.Tensor | None = None) -> Iterator[dict[int, torch.Tensor]]:
    """Record ``resid_post[l]`` of each of ``layers`` (default: all) during the forwards run inside the block;
    the hooks are removed on exit.

    Args:
        blocks: the model's decoder blocks (:func:`~.derive.find_decoder_layers`, ``ArchitectureAdapter.layers``).
        layers: indices into ``blocks``.
        columns: ``[batch]`` keep only column ``columns[i]`` of row ``i``, as ``[batch, d_model]`` on CPU (a batch
            never holds more than ``[layer, batch, d_model]`` of activations); ``None``: the whole
            ``[batch, pos, d_model]`` on the block's device. Either way detached, in the model's dtype.

    >>> with capture_resid(adapter.layers, [0, 3]) as cache:
    ...     model(input_ids)
    >>> cache[3].shape  # [batch, pos, d_model]
    """
    cache: dict[int, torch.Tensor] = {}
    handles = []
    for layer in layers if layers is not None else range(len(blocks)):
        def hook(_mod, _inp, output, layer=layer):
            resid = resid_from_output(output)  # [batch, pos, d_model]
            if columns is None:
                cache[layer] = resid.detach()
            else:
                rows = torch.arange(resid.shape[0], device=resid.device)
                cache[layer] = resid[rows, columns.to(resid.device)].detach().cpu()  # [batch, d_model]
        handles.append(blocks[layer].register_forward_hook(hook))
    try:
        yield cache
    finally:
        for h in handles:
            h.remove()


def resid_at(model: nn.Module, blocks: nn.ModuleList, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             position_ids: torch.Tensor, columns: torch.Tensor | Sequence[int], layers: Sequence[int]) -> torch.Tensor:
    """One forward of the causal LM ``model``; the residual after each of ``layers`` at one column per row.

    Args:
        model: the Hugging Face causal LM (its forward takes ``logits_to_keep``).
        blocks: its decoder blocks.
        input_ids, attention_mask, position_ids: ``[batch, pos]`` (a left-padded batch,
            :func:`ivlens.tasks.prompts.pad_left`).
        columns: ``[batch]`` the batch column to read in each row (T_inst, or the last token).
        layers: decoder layers to read.

    Returns:
        ``[layer, batch, d_model]`` on CPU in the model's dtype (exactly the blocks' outputs), in the order of
        ``layers``.
    """
    columns = torch.as_tensor(columns, dtype=torch.long)
    with capture_resid(blocks, layers, columns) as cache:
        with torch.inference_mode():  # logits of the last position only: [batch, pos, d_vocab] is never made
            model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                  logits_to_keep=1)
    return torch.stack([cache[layer] for layer in layers])  # [layer, batch, d_model]
