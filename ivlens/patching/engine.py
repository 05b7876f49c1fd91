"""The patching engine: every layer set × position of many samples in a few batched, layer-level passes.

Semantics. The IV at layer ``l`` is ``resid_post[l]`` (the output of decoder layer ``l``) at the source prompt's
last token. Patching a layer set ``S`` at target position ``p`` runs the target prompt and, after every layer
``l ∈ S``, replaces ``resid_post[l][p]`` with the IV of layer ``l``; the result is the logits at the last position.

Only the work a patch changes is done:

1. **Clean runs once.** Each target prompt runs once (its *clean* run), recording ``resid_post[l]`` and the
   attention keys/values of every layer; each source prompt runs once, giving its IVs ``[layer, d_model]``.
2. **Start at the first patched layer.** A row whose first patched layer is ``l0`` is identical to the clean run
   up to ``resid_post[l0]``, so it starts from the clean residual there (with the IV written at ``p``) and runs
   only layers ``l0+1 … L−1``.
3. **Only positions from ``p`` on.** The model is causal, so positions before ``p`` never change; their keys and
   values come from the clean run's cache and only the ``T − p`` positions from ``p`` on are recomputed (a
   last-position patch computes one token per layer).

Rows are grouped by the number of recomputed positions ``s = T − p`` (with left padding, the last ``s`` columns
of the batch). Within a group, computation is shared as a **trie over layer sets**: entering layer ``k`` a row's
state depends only on its target, its source and ``S ∩ [0, k−1]``, so rows that agree on their patches below
``k`` (e.g. ``(0, 3)``, ``(0, 4)`` and ``(0, 3, 5)`` below layer 3) are one state there, and each layer runs once per
distinct patch prefix. The layer-token evaluations executed are therefore at most the per-row minimum
``Σ_rows (L − 1 − l0) · (T − p)`` (nothing padded or recomputed), and usually well below it. Rows that compute the
same thing also run once: ``first`` and ``last`` of a one-token prompt, and, at the **last** position, a set and its
highest layer alone (the patch at the highest layer overwrites the only residual that later layers read at that
position, and earlier positions are untouched, so ``(S, last) ≡ ({max S}, last)`` exactly).

Architecture details (rotary embeddings, masks, the cache protocol) are the adapter's:
:meth:`~ivlens.models.adapters.ArchitectureAdapter.run_layer`.

Shapes: ``batch pos d_model layer kv_head d_head d_vocab``; ``rows`` counts patch configurations.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ivlens.models.adapters import ArchitectureAdapter, PrefixCache
from ivlens.tasks.prompts import Batch, pad_left

from .plan import LayerSet

log = logging.getLogger(__name__)

#: Default activation-memory budget for one batched layer call when ``batch_size`` is automatic.
DEFAULT_MEMORY_BUDGET = 1 << 30


@dataclass
class EngineStats:
    """Work counters. ``executed_evals``: layer-token evaluations run for patched rows; ``minimal_evals``: the
    per-row minimum for the requested rows, ``Σ (L − 1 − l0)(T − p)`` (what a row needs on its own; sharing
    between rows goes below it); ``baseline_evals``: those of clean, instructed and source runs; ``layer_calls``:
    batched decoder-layer calls; ``unique_rows``: distinct computations among ``rows``."""

    executed_evals: int = 0
    minimal_evals: int = 0
    baseline_evals: int = 0
    layer_calls: int = 0
    rows: int = 0
    unique_rows: int = 0

    def add(self, other: EngineStats) -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class CleanRun:
    """A left-padded batch run unpatched, layer by layer.

    ``resid[l]: [batch, pos, d_model]`` (``resid_post[l]``), ``keys[l], values[l]: [batch, kv_head, pos, d_head]``
    (after rotary; empty lists unless recorded), ``last_logits: [batch, d_vocab]``.
    """

    batch: Batch
    resid: list[torch.Tensor]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    last_logits: torch.Tensor
    lengths: tuple[int, ...] = field(default=())


@dataclass(frozen=True)
class RowSpec:
    """One patched row: clean-run batch row ``target``, source row ``source`` (into the IV tensor), the layer set,
    and ``token``: the patched position as an index into the target prompt's own tokens."""

    target: int
    source: int
    layers: LayerSet
    token: int


def _device(adapter: ArchitectureAdapter) -> torch.device:
    return adapter.embed.weight.device


@torch.no_grad()
def clean_run(adapter: ArchitectureAdapter, sequences: Sequence[Sequence[int]], pad_id: int,
              record: bool = True, stats: EngineStats | None = None) -> CleanRun:
    """Run ``sequences`` (token-id lists) unpatched as one left-padded batch through the adapter's layers.

    With ``record`` the residual after every layer and every layer's keys/values are kept (the inputs of
    :func:`patched_logits`); without, only the last-position logits.
    """
    batch = pad_left([tuple(s) for s in sequences], pad_id).to(_device(adapter))
    h = adapter.embed_input(batch.input_ids, batch.position_ids)  # [batch, pos, d_model]
    masks: dict = {}  # one [batch, 1, pos, pos] mask per sliding window
    pes: dict = {}  # one rotary (cos, sin) per layer type
    resid, keys, values = [], [], []
    for layer in range(adapter.n_layers):
        cache = PrefixCache(record=record)
        mask = adapter.layer_mask(layer, batch.attention_mask, h.shape[1], h.dtype, masks)
        kind = adapter.layer_type(layer)
        if kind not in pes:
            pes[kind] = adapter.position_embeddings(h, batch.position_ids, layer)
        h = adapter.run_layer(layer, h, attention_mask=mask, position_ids=batch.position_ids,
                              position_embeddings=pes[kind], cache=cache)
        if record:
            resid.append(h)
            keys.append(cache.new[0])
            values.append(cache.new[1])
    lengths = tuple(len(s) for s in sequences)
    if stats is not None:
        stats.baseline_evals += adapter.n_layers * sum(lengths)
        stats.layer_calls += adapter.n_layers
    return CleanRun(batch, resid, keys, values, adapter.logits(h[:, -1]), lengths)


@torch.no_grad()
def source_vectors(adapter: ArchitectureAdapter, sequences: Sequence[Sequence[int]], pad_id: int,
                   stats: EngineStats | None = None) -> torch.Tensor:
    """IVs of source prompts: ``resid_post[l]`` at each prompt's last token, ``[n_sources, layer, d_model]``."""
    run = clean_run(adapter, sequences, pad_id, record=True, stats=stats)
    return torch.stack([r[:, -1] for r in run.resid], dim=1)


def row_bytes(adapter: ArchitectureAdapter, n_keys: int, n_query: int) -> int:
    """Rough activation bytes of one row in one layer call: gathered prefix keys/values, attention scores and
    the MLP's hidden activations (used to pick the batch size)."""
    cfg = adapter.config
    d_mlp = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * adapter.d_model
    elems = (2 * 2 * adapter.n_kv_heads * adapter.d_head * n_keys  # prefix k/v, gathered and concatenated
             + 2 * adapter.n_heads * n_query * n_keys  # scores and weights
             + n_query * (8 * adapter.d_model + 3 * d_mlp))
    return elems * adapter.embed.weight.element_size()


def auto_batch_size(adapter: ArchitectureAdapter, n_keys: int, n_query: int,
                    budget: int | None = None) -> int:
    """Rows per layer call that fit ``budget`` bytes (default: ``IVLENS_PATCH_MEMORY`` or 1 GiB; on CUDA at most
    half of the free memory)."""
    if budget is None:
        budget = int(os.environ.get("IVLENS_PATCH_MEMORY", DEFAULT_MEMORY_BUDGET))
        dev = _device(adapter)
        if dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(dev)
            budget = min(budget, free // 2)
    return max(1, budget // max(1, row_bytes(adapter, n_keys, n_query)))


@torch.no_grad()
def patched_logits(adapter: ArchitectureAdapter, clean: CleanRun, ivs: torch.Tensor, rows: Sequence[RowSpec],
                   batch_size: int | None = None, stats: EngineStats | None = None,
                   on_rows: Callable[[int], None] | None = None) -> torch.Tensor:
    """Last-position logits of every patched row, ``[len(rows), d_vocab]``.

    Args:
        adapter: the target model's adapter.
        clean: the targets' clean run (``record=True``).
        ivs: ``[n_sources, layer, d_model]`` from :func:`source_vectors` (of this or another checkpoint of the same
            shape).
        rows: the configurations; ``RowSpec.target`` indexes ``clean``'s batch, ``RowSpec.source`` ``ivs``.
        batch_size: rows per layer call (``None``: :func:`auto_batch_size`).
        stats: counters to add to.
        on_rows: called with the number of requested rows finished after each batch (progress bars).
    """
    L = adapter.n_layers
    W = clean.batch.input_ids.shape[1]
    ivs = ivs.to(device=_device(adapter), dtype=clean.resid[0].dtype)
    st = EngineStats()
    # Deduplicate rows that compute the same thing, and group by suffix length s = W − column.
    unique: dict[tuple, int] = {}
    where = []  # requested row -> unique index
    for r in rows:
        if not r.layers or r.layers[0] < 0 or r.layers[-1] >= L or list(r.layers) != sorted(set(r.layers)):
            raise ValueError(f"bad layer set {r.layers}: sorted, distinct layers in 0..{L - 1} expected")
        n_tok = clean.lengths[r.target]
        if not 0 <= r.token < n_tok:
            raise ValueError(f"patch position {r.token} outside the target prompt ({n_tok} tokens)")
        col = clean.batch.pad[r.target] + r.token
        # At the last position a patch overwrites the whole residual that later layers read there (earlier
        # positions are untouched), so only the highest patched layer matters: (S, last) ≡ ({max S}, last).
        layers = r.layers[-1:] if r.token == n_tok - 1 else r.layers
        key = (r.target, r.source, layers, col)
        if key not in unique:
            unique[key] = len(unique)
        where.append(unique[key])
        st.minimal_evals += (L - 1 - r.layers[0]) * (n_tok - r.token)
    st.rows, st.unique_rows = len(rows), len(unique)
    keys = list(unique)
    groups: dict[int, list[int]] = defaultdict(list)
    for u, (_t, _s, _layers, col) in enumerate(keys):
        groups[W - col].append(u)
    out = torch.empty((len(keys), adapter.d_vocab), dtype=clean.last_logits.dtype, device=_device(adapter))
    for s, members in sorted(groups.items()):
        members.sort(key=lambda u: keys[u][:3])  # rows of one target and source together: they share states
        bs = batch_size or auto_batch_size(adapter, W, s)
        for i in range(0, len(members), bs):
            chunk = members[i:i + bs]
            out[chunk] = _run_group(adapter, clean, ivs, [keys[u] for u in chunk], s, st)
            if on_rows is not None:
                on_rows(len(chunk))
    if stats is not None:
        stats.add(st)
    return out[torch.tensor(where, dtype=torch.long, device=out.device)] if where else out[:0]


def _run_group(adapter: ArchitectureAdapter, clean: CleanRun, ivs: torch.Tensor, keys: list[tuple], s: int,
               st: EngineStats) -> torch.Tensor:
    """Logits ``[len(keys), d_vocab]`` of rows sharing the suffix length ``s`` (the patched position is suffix
    column 0), computed as a trie over their layer sets.

    Entering layer ``k``, a row's state depends only on ``(target, source, S ∩ [0, k−1])``, so rows that agree on
    their patches below ``k`` share one state there; a row starts (``S ∩ [0, k] ≠ ∅``) from the clean
    ``resid_post[k]``. Each layer therefore runs once per *distinct* patch prefix, not once per row.
    """
    L = adapter.n_layers
    W = clean.batch.input_ids.shape[1]
    dev = _device(adapter)
    state_of: dict[tuple, int] = {}  # (target, source, prefix) -> row of h
    h = clean.resid[0].new_empty((0, s, adapter.d_model))  # states: [n_states, s, d_model]
    h_tgt = torch.empty(0, dtype=torch.long, device=dev)  # target (clean batch row) of each state
    for k in range(L):
        if k > 0 and h.shape[0]:
            # layer k on every state (prefixes ⊆ [0, k−1]); earlier positions' keys/values from the clean run
            pos = clean.batch.position_ids[h_tgt, W - s:]  # [n_states, s]
            mask = adapter.layer_mask(k, clean.batch.attention_mask[h_tgt], s, h.dtype)  # [n_states, 1, s, W]
            cache = PrefixCache(clean.keys[k][h_tgt, :, :W - s], clean.values[k][h_tgt, :, :W - s])
            h = adapter.run_layer(k, h, attention_mask=mask, position_ids=pos,
                                  position_embeddings=adapter.position_embeddings(h, pos, k), cache=cache)
            st.executed_evals += h.shape[0] * s
            st.layer_calls += 1
        # states after patching at layer k: prefixes S ∩ [0, k]
        new: dict[tuple, int] = {}
        from_idx, tgt, patch_src, patched = [], [], [], []
        for t, src, layers, _col in keys:
            before = tuple(x for x in layers if x < k)
            after = before + (k,) if k in layers else before
            if not after or (t, src, after) in new:
                continue
            new[(t, src, after)] = len(from_idx)
            from_idx.append(state_of[(t, src, before)] if before else -1)
            tgt.append(t)
            if k in layers:
                patched.append(len(from_idx) - 1)
                patch_src.append(src)
        if not new:
            continue
        f = torch.tensor(from_idx, dtype=torch.long, device=dev)
        h_tgt = torch.tensor(tgt, dtype=torch.long, device=dev)
        h_new = h.new_empty((len(from_idx), s, adapter.d_model))
        carried = f >= 0
        if carried.any():
            h_new[carried] = h[f[carried]]
        if (~carried).any():  # starting here: the clean residual after layer k
            h_new[~carried] = clean.resid[k][h_tgt[~carried], W - s:]
        if patched:
            pi = torch.tensor(patched, dtype=torch.long, device=dev)
            h_new[pi, 0] = ivs[torch.tensor(patch_src, dtype=torch.long, device=dev), k]
        h, state_of = h_new, new
    rows = torch.tensor([state_of[(t, src, layers)] for t, src, layers, _col in keys], dtype=torch.long, device=dev)
    return adapter.logits(h[rows, -1])
