"""A patch sweep's model work through the nnsight programs (:mod:`ivlens.nnsight_program`): ``--remote`` and
``--backend nnsight``.

:func:`ivlens.patching.sweep.patch_sweep` hands a chunk of samples to :func:`first_token_scores_nnsight` when its
model is an :class:`~ivlens.ndif.NNsightModel` (``--remote``: on NDIF, or local weights for the tests).
Everything that touches the model is a trace: the sources' IVs (the residual after every layer at the instruction
prompt's last token), the target-only and instructed baselines (last-position logits), and the patched rows
(:func:`patched_traces`: whole forwards, one batch row per configuration, as many rows per trace as fit the memory
budget). ``--backend nnsight`` on a loaded model runs the same patched-row traces (:func:`patched_metrics_nnsight`
on :func:`ivlens.ndif.local_model`) in place of the torch engine's rows; its IVs and baselines stay the engine's.
The metrics are computed from the returned logits with the same :func:`~ivlens.patching.metrics.label_metrics` as
the torch engine, so the rows equal the engine's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from ivlens.estimate.model import forward_batch_size
from ivlens.ndif import NNsightModel
from ivlens.nnsight_program import last_logits, patched_last_logits, residuals_at, slices
from ivlens.tasks.prompts import Batch, pad_left

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


def rows_per_trace(model: NNsightModel, width: int, memory_budget: int | None) -> int:
    """Patched rows per trace within ``memory_budget`` bytes: a whole forward of ``width`` positions each (the
    cost of one prompt in IV collection, :func:`ivlens.estimate.model.forward_batch_size`)."""
    return forward_batch_size(model, width, memory_budget)


def patched_traces(model: NNsightModel, batch: Batch, ivs: torch.Tensor, rows: Sequence[RowSpec], *,
                   batch_size: int | None = None, memory_budget: int | None = None,
                   stats: EngineStats | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
    """The patched rows as traces of :func:`ivlens.nnsight_program.patched_last_logits`, the program ``--remote``
    sends (on NDIF, or here for ``--backend nnsight`` on a :func:`~ivlens.ndif.local_model`).

    One batch row per configuration (a copy of its target's row of the left-padded ``batch``); at each layer of a
    row's layer set the residual at its token is set to the source's IV (``ivs: [n_sources, layer, d_model]``).
    No savings: every row runs every layer on the whole prompt. Rows per trace: ``batch_size``, else as many
    whole forwards as fit ``memory_budget`` (:func:`rows_per_trace`).

    Yields:
        ``(start, end, logits)`` for consecutive slices of ``rows``: ``logits [end − start, d_vocab]`` float32 on
        CPU, one trace each.
    """
    L, width = model.n_layers, batch.input_ids.shape[1]
    lengths = batch.attention_mask.sum(1).tolist()
    ivs = ivs.float().cpu()
    bs = batch_size or rows_per_trace(model, width, memory_budget)
    st = EngineStats()
    for i, j in slices(len(rows), bs):
        chunk = rows[i:j]
        tgt = torch.tensor([r.target for r in chunk], dtype=torch.long)
        patches = {}
        for layer in sorted({x for r in chunk for x in r.layers}):  # forward order
            sel = [k for k, r in enumerate(chunk) if layer in r.layers]
            patches[layer] = (torch.tensor(sel, dtype=torch.long),
                              torch.tensor([batch.pad[chunk[k].target] + chunk[k].token for k in sel],
                                           dtype=torch.long),
                              ivs[torch.tensor([chunk[k].source for k in sel]), layer])
        logits = patched_last_logits(model, batch, tgt, patches)
        for r in chunk:
            st.minimal_evals += (L - 1 - r.layers[0]) * (lengths[r.target] - r.token)
        st.executed_evals += len(chunk) * L * width
        st.layer_calls += L
        st.unembed_rows += len(chunk)
        st.groups += 1
        yield i, j, logits
    st.rows = st.unique_rows = len(rows)
    if stats is not None:
        stats.add(st)


def patched_metrics_nnsight(model: NNsightModel, batch: Batch, ivs: torch.Tensor, rows: Sequence[RowSpec],
                            label: torch.Tensor, alt: torch.Tensor | None = None, space: torch.Tensor | None = None,
                            *, batch_size: int | None = None, memory_budget: int | None = None,
                            stats: EngineStats | None = None, on_rows: Callable[[int], None] | None = None,
                            device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The metrics ``{metric: [len(rows)]}`` (on CPU) of every patched row of :func:`patched_traces`, each trace's
    logits reduced at once on ``device`` by :func:`~ivlens.patching.metrics.label_metrics` (``label, alt:
    [n_targets]`` token ids per target, ``space: [k]``)."""
    out: dict[str, torch.Tensor] = {}
    tgt_all = torch.tensor([r.target for r in rows], dtype=torch.long)
    label, alt = label.cpu(), (alt.cpu() if alt is not None else None)
    space = space.to(device) if space is not None else None
    for i, j, logits in patched_traces(model, batch, ivs, rows, batch_size=batch_size, memory_budget=memory_budget,
                                       stats=stats):
        t = tgt_all[i:j]
        m = label_metrics(logits.to(device), label[t].to(device), alt[t].to(device) if alt is not None else None,
                          space)
        for name, v in m.items():
            if name not in out:
                out[name] = torch.empty(len(rows), dtype=v.dtype)
            out[name][i:j] = v.cpu()
        if on_rows is not None:
            on_rows(j - i)
    if not out:
        empty = torch.empty(0, model.model.config.vocab_size)
        m = label_metrics(empty, label[:0], alt[:0] if alt is not None else None, space.cpu() if space is not None
                          else None)
        return {k: v.cpu() for k, v in m.items()}
    return out


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
    out = patched_metrics_nnsight(model, tb, ivs, specs, label, alt, space, batch_size=batch_size,
                                  memory_budget=memory_budget, stats=stats, on_rows=on_rows)
    stats.baseline_evals += model.n_layers * sum(len(s) for s in (*targets, *instructed))
    base_t = label_metrics(last_logits(model, tb), label, alt, space)
    base_i = label_metrics(last_logits(model, ib), label, alt, space)
    return out, base_t, base_i
