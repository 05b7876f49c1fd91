"""A patch sweep's model work through the nnsight programs (:mod:`ivlens.nnsight_program`): ``--remote``.

:func:`ivlens.patching.sweep.patch_sweep` hands a chunk of samples here when its model is an
:class:`~ivlens.ndif.NNsightModel` (on NDIF, or local weights for the tests). Everything that touches the model
is a trace: the sources' IVs (the residual after every layer at the instruction prompt's last token), the
target-only and instructed baselines (last-position logits), and the patched rows (whole forwards, one batch row
per configuration, as many rows per trace as fit the memory budget). The metrics are computed here from the
returned logits with the same :func:`~ivlens.patching.metrics.label_metrics` as the torch engine, so the rows
equal the engine's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ivlens.estimate.model import forward_batch_size
from ivlens.ndif import NNsightModel
from ivlens.nnsight_program import last_logits, patched_last_logits, residuals_at, slices
from ivlens.tasks.prompts import pad_left

from .engine import EngineStats, RowSpec
from .metrics import label_metrics


def source_vectors_nnsight(model: NNsightModel, sequences: Sequence[Sequence[int]], pad_id: int,
                           stats: EngineStats | None = None) -> torch.Tensor:
    """IVs of source prompts, ``[n_sources, layer, d_model]``: ``resid_post[l]`` at each prompt's last token
    (as :func:`ivlens.patching.engine.source_vectors`)."""
    batch = pad_left([tuple(s) for s in sequences], pad_id)
    width = batch.input_ids.shape[1]
    resid = residuals_at(model, batch, [width - 1] * len(sequences), list(range(model.n_layers)))
    if stats is not None:
        stats.baseline_evals += model.n_layers * sum(len(s) for s in sequences)
    return resid.permute(1, 0, 2)  # [source, layer, d_model]


def rows_per_trace(model: NNsightModel, width: int, memory_budget: int) -> int:
    """Patched rows per trace within ``memory_budget`` bytes: a whole forward of ``width`` positions each (the
    cost of one prompt in IV collection, :func:`ivlens.estimate.model.forward_batch_size`)."""
    return forward_batch_size(model, width, memory_budget)


def first_token_scores_nnsight(model: NNsightModel, targets: Sequence[Sequence[int]],
                               instructed: Sequence[Sequence[int]], positions: Sequence[Sequence[int]],
                               layer_sets: Sequence[tuple[int, ...]], ivs: torch.Tensor, label: torch.Tensor,
                               alt: torch.Tensor, space: torch.Tensor, pad_id: int, *, stats: EngineStats,
                               batch_size: int | None, memory_budget: int,
                               on_rows: Callable[[int], None] | None = None):
    """First-token metrics of every patched row (sample, position, layer set order), and the target-only and
    instructed baselines per sample: ``(rows, base_target, base_instructed)``, each ``{metric: tensor}``."""
    tb = pad_left([tuple(s) for s in targets], pad_id)
    ib = pad_left([tuple(s) for s in instructed], pad_id)
    specs = [RowSpec(b, 0, tuple(layers), tok) for b in range(len(targets)) for tok in positions[b]
             for layers in layer_sets]
    width = tb.input_ids.shape[1]
    bs = batch_size or rows_per_trace(model, width, memory_budget)
    ivs = ivs.float().cpu()
    out: dict[str, torch.Tensor] = {}
    for i, j in slices(len(specs), bs):
        chunk = specs[i:j]
        tgt = torch.tensor([r.target for r in chunk], dtype=torch.long)
        patches = {}
        for layer in sorted({x for r in chunk for x in r.layers}):
            sel = [k for k, r in enumerate(chunk) if layer in r.layers]
            patches[layer] = (torch.tensor(sel, dtype=torch.long),
                              torch.tensor([tb.pad[chunk[k].target] + chunk[k].token for k in sel], dtype=torch.long),
                              ivs[torch.tensor([chunk[k].source for k in sel]), layer])
        logits = patched_last_logits(model, tb, tgt, patches)
        for name, v in label_metrics(logits, label[tgt], alt[tgt], space).items():
            if name not in out:
                out[name] = torch.empty(len(specs), dtype=v.dtype)
            out[name][i:j] = v
        stats.executed_evals += len(chunk) * model.n_layers * width
        stats.unembed_rows += len(chunk)
        stats.groups += 1
        if on_rows is not None:
            on_rows(j - i)
    stats.rows += len(specs)
    stats.unique_rows += len(specs)
    stats.baseline_evals += model.n_layers * sum(len(s) for s in (*targets, *instructed))
    base_t = label_metrics(last_logits(model, tb), label, alt, space)
    base_i = label_metrics(last_logits(model, ib), label, alt, space)
    if not out:
        out = {k: v[:0] for k, v in base_t.items()}
    return out, base_t, base_i
