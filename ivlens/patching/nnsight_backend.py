"""The same patched rows through nnsight: whole forwards, configurations as batch rows.

A second backend behind the interface of :func:`ivlens.patching.engine.patched_metrics` (same arguments, same
result; :func:`patched_logits_nnsight` mirrors :func:`~ivlens.patching.engine.patched_logits`). It does none of
the engine's savings (every row runs every layer on the whole prompt), but it only touches the model through
nnsight's envoys, so the same code can later run on a remote nnsight/NDIF model. Use it with
``patch_sweep(..., backend="nnsight")`` or ``ivlens patch --backend nnsight``; it is tested against the same naive
reference as the fast engine.

Recipe (from the stack notes, checked against plain hooks): batch = one copy of the target per configuration;
inside one trace, for every layer in forward order, ``h = layers[l].output`` and ``h[rows_l, cols_l] = IV_l``.
Memory follows the engine's contract: rows per trace come from the memory budget (a whole forward of the padded
prompt per row, plus the last position's logits), and each trace's logits are reduced to the metrics at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from ivlens.models.adapters import ArchitectureAdapter

from .engine import CleanRun, EngineStats, RowSpec, metric_row_bytes, row_bytes, unembed_device
from .metrics import label_metrics


def _envoy(root, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def nnsight_batch_size(adapter: ArchitectureAdapter, width: int, budget: int | None = None) -> int:
    """Rows per trace within ``budget`` bytes: a whole forward of ``width`` positions and one row of logits each."""
    if budget is None:
        from ivlens.budget import resolve_memory_budget

        budget = resolve_memory_budget(None, adapter.embed.weight.device)
    return max(1, budget // (row_bytes(adapter, width, width) + metric_row_bytes(adapter)))


def _batches(adapter: ArchitectureAdapter, clean: CleanRun, ivs: torch.Tensor, rows: Sequence[RowSpec],
             batch_size: int | None, memory_budget: int | None, stats: EngineStats | None, remote: bool,
             ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start, end, logits: [end − start, d_vocab])`` for consecutive slices of ``rows``, one trace each."""
    import nnsight
    from nnsight import NNsight

    L = adapter.n_layers
    W = clean.batch.input_ids.shape[1]
    nm = NNsight(adapter.model)
    layers = _envoy(nm, adapter.spec.layers)
    ivs = ivs.to(device=clean.batch.input_ids.device, dtype=clean.resid[0].dtype if clean.resid else ivs.dtype)
    st = EngineStats()
    bs = batch_size or nnsight_batch_size(adapter, W, memory_budget)
    for i in range(0, len(rows), bs):
        chunk = rows[i:i + bs]
        tgt = torch.tensor([r.target for r in chunk], dtype=torch.long, device=clean.batch.input_ids.device)
        per_layer: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for layer in range(L):
            sel = [j for j, r in enumerate(chunk) if layer in r.layers]
            if sel:
                per_layer[layer] = (
                    torch.tensor(sel, dtype=torch.long),
                    torch.tensor([clean.batch.pad[chunk[j].target] + chunk[j].token for j in sel], dtype=torch.long),
                    ivs[torch.tensor([chunk[j].source for j in sel]), layer])
        with nm.trace(input_ids=clean.batch.input_ids[tgt], attention_mask=clean.batch.attention_mask[tgt],
                      position_ids=clean.batch.position_ids[tgt], logits_to_keep=1, remote=remote):
            for layer in sorted(per_layer):  # forward order
                r_idx, c_idx, vals = per_layer[layer]
                h = adapter.resid_from_output(layers[layer].output)
                h[r_idx, c_idx] = vals.to(h.device)
            logits = nnsight.save(nm.output.logits[:, -1])
        for r in chunk:
            st.minimal_evals += (L - 1 - r.layers[0]) * (clean.lengths[r.target] - r.token)
        st.executed_evals += len(chunk) * L * W
        st.layer_calls += L
        st.unembed_rows += len(chunk)
        st.groups += 1
        yield i, i + len(chunk), logits
    st.rows = st.unique_rows = len(rows)
    if stats is not None:
        stats.add(st)


@torch.no_grad()
def patched_metrics_nnsight(adapter: ArchitectureAdapter, clean: CleanRun, ivs: torch.Tensor,
                            rows: Sequence[RowSpec], label: torch.Tensor, alt: torch.Tensor | None = None,
                            space: torch.Tensor | None = None, *, batch_size: int | None = None,
                            memory_budget: int | None = None, stats: EngineStats | None = None,
                            on_rows: Callable[[int], None] | None = None,
                            remote: bool = False) -> dict[str, torch.Tensor]:
    """The metrics ``{metric: [len(rows)]}`` of every patched row via nnsight (see the module docstring); each
    trace's logits are reduced at once."""
    udev = unembed_device(adapter)
    label, alt = label.to(udev), (alt.to(udev) if alt is not None else None)
    space = space.to(udev) if space is not None else None
    tgt_all = torch.tensor([r.target for r in rows], dtype=torch.long, device=udev)
    out: dict[str, torch.Tensor] = {}
    for i, j, logits in _batches(adapter, clean, ivs, rows, batch_size, memory_budget, stats, remote):
        t = tgt_all[i:j]
        m = label_metrics(logits.to(udev), label[t], alt[t] if alt is not None else None, space)
        del logits
        for name, v in m.items():
            if name not in out:
                out[name] = torch.empty(len(rows), dtype=v.dtype)
            out[name][i:j] = v.cpu()
        if on_rows is not None:
            on_rows(j - i)
    if not out:
        m = label_metrics(clean.last_logits[:0], label[:0], alt[:0] if alt is not None else None, space)
        return {k: v.cpu() for k, v in m.items()}
    return out


@torch.no_grad()
def patched_logits_nnsight(adapter: ArchitectureAdapter, clean: CleanRun, ivs: torch.Tensor,
                           rows: Sequence[RowSpec], batch_size: int | None = None,
                           stats: EngineStats | None = None, on_rows: Callable[[int], None] | None = None,
                           remote: bool = False, memory_budget: int | None = None) -> torch.Tensor:
    """Last-position logits ``[len(rows), d_vocab]`` of every patched row, via nnsight (tests and a few rows)."""
    outs = []
    for i, j, logits in _batches(adapter, clean, ivs, rows, batch_size, memory_budget, stats, remote):
        outs.append(logits)
        if on_rows is not None:
            on_rows(j - i)
    return torch.cat(outs) if outs else clean.last_logits[:0]
