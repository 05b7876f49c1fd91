"""The same patched rows through nnsight: whole forwards, configurations as batch rows.

A second backend behind the interface of :func:`ivlens.patching.engine.patched_logits` (same arguments, same
result). It does none of the engine's savings (every row runs every layer on the whole prompt), but it only
touches the model through nnsight's envoys, so the same code can later run on a remote nnsight/NDIF model. Use
it with ``patch_sweep(..., backend="nnsight")`` or ``ivlens patch --backend nnsight``; it is tested against the
same naive reference as the fast engine.

Recipe (from the stack notes, checked against plain hooks): batch = one copy of the target per configuration;
inside one trace, for every layer in forward order, ``h = layers[l].output`` and ``h[rows_l, cols_l] = IV_l``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ivlens.models.adapters import ArchitectureAdapter

from .engine import CleanRun, EngineStats, RowSpec, auto_batch_size


def _envoy(root, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


@torch.no_grad()
def patched_logits_nnsight(adapter: ArchitectureAdapter, clean: CleanRun, ivs: torch.Tensor,
                           rows: Sequence[RowSpec], batch_size: int | None = None,
                           stats: EngineStats | None = None, on_rows: Callable[[int], None] | None = None,
                           remote: bool = False) -> torch.Tensor:
    """Last-position logits ``[len(rows), d_vocab]`` of every patched row, via nnsight (see the module docstring)."""
    import nnsight
    from nnsight import NNsight

    L = adapter.n_layers
    W = clean.batch.input_ids.shape[1]
    nm = NNsight(adapter.model)
    layers = _envoy(nm, adapter.spec.layers)
    ivs = ivs.to(device=clean.last_logits.device, dtype=clean.resid[0].dtype if clean.resid else ivs.dtype)
    st = EngineStats()
    bs = batch_size or auto_batch_size(adapter, W, W)
    outs = []
    for i in range(0, len(rows), bs):
        chunk = rows[i:i + bs]
        tgt = torch.tensor([r.target for r in chunk], dtype=torch.long)
        per_layer: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for layer in range(L):
            sel = [j for j, r in enumerate(chunk) if layer in r.layers]
            if sel:
                per_layer[layer] = (
                    torch.tensor(sel, dtype=torch.long),
                    torch.tensor([clean.batch.pad[chunk[j].target] + chunk[j].token for j in sel], dtype=torch.long),
                    ivs[torch.tensor([chunk[j].source for j in sel]), layer])
        with nm.trace(input_ids=clean.batch.input_ids[tgt], attention_mask=clean.batch.attention_mask[tgt],
                      position_ids=clean.batch.position_ids[tgt], remote=remote):
            for layer in sorted(per_layer):  # forward order
                r_idx, c_idx, vals = per_layer[layer]
                h = adapter.resid_from_output(layers[layer].output)
                h[r_idx, c_idx] = vals
            logits = nnsight.save(nm.output.logits[:, -1])
        outs.append(logits)
        for r in chunk:
            st.minimal_evals += (L - 1 - r.layers[0]) * (clean.lengths[r.target] - r.token)
        st.executed_evals += len(chunk) * L * W
        st.layer_calls += L
        if on_rows is not None:
            on_rows(len(chunk))
    st.rows = st.unique_rows = len(rows)
    if stats is not None:
        stats.add(st)
    return torch.cat(outs) if outs else clean.last_logits[:0]
