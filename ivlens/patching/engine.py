"""The patching engine: every layer set × position of many samples in a few batched, layer-level passes.

Semantics. The IV at layer ``l`` is ``resid_post[l]`` (the output of decoder layer ``l``) at the source prompt's
last token. Patching a layer set ``S`` at target position ``p`` runs the target prompt and, after every layer
``l ∈ S``, replaces ``resid_post[l][p]`` with the IV of layer ``l``; the result is the logits at the last position,
reduced at once to the row's metrics (:func:`patched_metrics`; :func:`patched_logits` keeps the logits, for tests
and small row counts).

Only the work a patch changes is done:

1. **Clean runs once.** Each target prompt runs once (its *clean* run), recording ``resid_post[l]`` and the
   attention keys/values of every layer; each source prompt runs once, giving its IVs ``[layer, d_model]`` (a plain
   forward read with the one residual read-out, :func:`ivlens.models.adapters.resid_at`, as the probes' IVs).
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

**Bounded memory.** A trie holds at most one state per row at every layer, so the rows of one suffix length are
cut into *groups* of at most ``G`` rows (``G`` from the memory budget, :func:`auto_batch_size`), each run as its own
trie. Rows are sorted by ``(target, source, layer set)``, so a subtree of the trie (the rows of one target and
source that share a patch prefix) is a contiguous run; groups are packed from whole subtrees, and a subtree larger
than ``G`` is split at its children, so sharing is lost only at the few roots that are cut. Each group's final
residuals are unembedded in sub-batches of at most ``U`` rows (:func:`metric_row_bytes`) and reduced to the
metrics of :func:`ivlens.patching.metrics.label_metrics` at once; no tensor grows with the number of rows, layer
sets or samples beyond one group (the per-row results are a few scalars each).

**Additive edits (steering).** With ``edit="add"`` the same rows *add* their vector instead of replacing the
residual: after every layer ``l ∈ S``, ``resid_post[l][p : p + span] += v[l]`` (``RowSpec.span`` positions from
``p``; ``ivlens steer`` passes ``α · v`` as the "IVs"). Everything above holds unchanged (a row still equals the
clean run up to ``l0`` and before ``p``), except the last-position identity, which needs a replacement.

**Scheduling apart from running.** The schedule (deduplication, groups, tries) is :mod:`ivlens.patching.trie`'s:
index arithmetic on the row specs alone (no tensors). Its :func:`~ivlens.patching.trie.scheduled_work` builds the
same groups and tries and returns the :class:`EngineStats` the engine will report, so cost estimates reuse the
engine's schedule; this module executes them (forward passes).

**Devices.** Each layer runs on its own parameters' device (a model spread with accelerate's
``device_map="auto"``): states, masks, caches, rotary embeddings and IVs move to it; metrics are computed on the
unembedding's device, in float32 whatever the model's dtype.

Architecture details (rotary embeddings, masks, the cache protocol) are the adapter's:
:meth:`~ivlens.models.adapters.ArchitectureAdapter.run_layer`.

Shapes: ``batch pos d_model layer kv_head d_head d_vocab``; ``rows`` counts patch configurations.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ivlens.estimate.costs import metric_bytes, trie_state_bytes
from ivlens.models.adapters import ArchitectureAdapter, PrefixCache, resid_at
from ivlens.tasks.prompts import Batch, pad_left

from .metrics import continuation_logprobs, label_metrics
from .trie import (
    Edit,
    EngineStats,
    RowKey,
    RowSpec,
    TrieGroup,
    count_group,
    dedup_rows,
    schedule_groups,
    states_per_layer,
)

log = logging.getLogger(__name__)


@dataclass
class CleanRun:
    """A left-padded batch run unpatched, layer by layer.

    ``resid[l]: [batch, pos, d_model]`` (``resid_post[l]``, on layer ``l``'s device), ``keys[l], values[l]:
    [batch, kv_head, pos, d_head]`` (after rotary; empty lists unless recorded), ``last_logits: [batch, d_vocab]``.
    """

    batch: Batch
    resid: list[torch.Tensor]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    last_logits: torch.Tensor
    lengths: tuple[int, ...] = field(default=())


@dataclass
class PatchedKV:
    """The keys/values of a group's patched rows at every layer, for tokens that follow the prompt (answer scoring).

    A row equals the clean run before its recomputed suffix (the last ``s`` columns), and in the suffix at every
    layer up to its first patched one; ``new[k]``: ``(keys, values)``, each ``[n_states, kv_head, s, d_head]``, of
    the trie states layer ``k`` ran on (``None`` where it ran on none); ``state[k]: [n_members]`` each member's
    state there (``-1``: the member is still clean at layer ``k``); ``targets: [n_members]`` clean batch rows.
    """

    clean: CleanRun
    s: int
    targets: np.ndarray
    new: list
    state: list[np.ndarray]

    def full(self, sel: np.ndarray) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Keys and values of every prompt column of members ``sel``, per layer ``[len(sel), kv_head, W, d_head]``
        (on that layer's device)."""
        W, s = self.clean.batch.input_ids.shape[1], self.s
        keys, values = [], []
        for k in range(len(self.clean.keys)):
            dev = self.clean.keys[k].device
            tgt = torch.from_numpy(self.targets[sel]).to(dev)
            ck, cv = self.clean.keys[k][tgt], self.clean.values[k][tgt]  # copies: the clean run is left as it is
            st = self.state[k][sel]
            if (st >= 0).any():
                rows = torch.from_numpy(np.flatnonzero(st >= 0)).to(dev)
                nk, nv = self.new[k]
                si = torch.from_numpy(st[st >= 0]).to(nk.device)
                ck[rows, :, W - s:] = nk[si].to(dev)
                cv[rows, :, W - s:] = nv[si].to(dev)
            keys.append(ck)
            values.append(cv)
        return keys, values


def _device(adapter: ArchitectureAdapter) -> torch.device:
    return adapter.embed.weight.device


def layer_device(adapter: ArchitectureAdapter, layer: int) -> torch.device:
    """The device layer ``layer`` computes on: its parameters' device, or accelerate's execution device for a layer
    whose weights are offloaded (``meta`` parameters behind a hook)."""
    mod = adapter.layer(layer)
    hook = getattr(mod, "_hf_hook", None)
    if hook is not None and getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    p = next(mod.parameters(), None)
    return p.device if p is not None else _device(adapter)


def unembed_device(adapter: ArchitectureAdapter) -> torch.device:
    w = adapter.unembed.weight
    return w.device if w.device.type != "meta" else _device(adapter)


def _to(x, dev: torch.device):
    if x is None:
        return None
    if isinstance(x, tuple | list):
        return type(x)(_to(v, dev) for v in x)
    return x.to(dev)


@torch.no_grad()
def clean_run(adapter: ArchitectureAdapter, sequences: Sequence[Sequence[int]], pad_id: int,
              record: bool = True, stats: EngineStats | None = None) -> CleanRun:
    """Run ``sequences`` (token-id lists) unpatched as one left-padded batch through the adapter's layers.

    With ``record`` the residual after every layer and every layer's keys/values are kept (the inputs of
    :func:`patched_metrics`); without, only the last-position logits.
    """
    batch = pad_left([tuple(s) for s in sequences], pad_id).to(_device(adapter))
    h, resid, keys, values = layer_pass(adapter, batch, record=record)
    lengths = tuple(len(s) for s in sequences)
    if stats is not None:
        stats.baseline_evals += adapter.n_layers * sum(lengths)
        stats.layer_calls += adapter.n_layers
    return CleanRun(batch, resid, keys, values, adapter.logits(h[:, -1]), lengths)


def layer_pass(adapter: ArchitectureAdapter, batch: Batch, *, record: bool = False,
               after_layer: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
               ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """One whole forward of a left-padded ``batch`` through the adapter's layers, layer by layer (the engine's
    clean run; the linear estimate's gradient pass, :mod:`ivlens.patching.linear`, runs the same code with
    autograd on).

    ``after_layer(l, resid_post[l]) -> resid_post[l]`` may replace each layer's output (``[batch, pos, d_model]``)
    before the next layer reads it. Returns the last layer's output ``[batch, pos, d_model]`` and, with
    ``record``, ``resid_post[l]`` and the keys/values ``[batch, kv_head, pos, d_head]`` of every layer (else
    empty lists). Gradients flow unless the caller disables them.
    """
    h = adapter.embed_input(batch.input_ids, batch.position_ids)  # [batch, pos, d_model]
    masks: dict = {}  # one [batch, 1, pos, pos] mask per (sliding window, device)
    pes: dict = {}  # one rotary (cos, sin) per (layer type, device)
    resid, keys, values = [], [], []
    for layer in range(adapter.n_layers):
        dev = layer_device(adapter, layer)
        h = h.to(dev)
        cache = PrefixCache(record=record)
        window = adapter.sliding_window(layer)
        if (window, dev) not in masks:
            masks[window, dev] = adapter.layer_mask(layer, batch.attention_mask.to(dev), h.shape[1], h.dtype)
        pos = batch.position_ids.to(dev)
        kind = adapter.layer_type(layer)
        if (kind, dev) not in pes:
            pes[kind, dev] = _to(adapter.position_embeddings(h, pos, layer), dev)
        h = adapter.run_layer(layer, h, attention_mask=masks[window, dev], position_ids=pos,
                              position_embeddings=pes[kind, dev], cache=cache)
        if after_layer is not None:
            h = after_layer(layer, h)
        if record:
            resid.append(h)
            keys.append(cache.new[0])
            values.append(cache.new[1])
    return h, resid, keys, values


def source_vectors(adapter: ArchitectureAdapter, sequences: Sequence[Sequence[int]], pad_id: int,
                   stats: EngineStats | None = None) -> torch.Tensor:
    """IVs of source prompts: ``resid_post[l]`` at each prompt's last token, ``[n_sources, layer, d_model]`` (on the
    embedding's device, in the model's dtype), read with the one residual read-out
    (:func:`ivlens.models.adapters.resid_at`, the read-out of the probes' and steering's IVs)."""
    batch = pad_left([tuple(s) for s in sequences], pad_id).to(_device(adapter))
    last = [batch.input_ids.shape[1] - 1] * len(sequences)
    resid = resid_at(adapter.model, adapter.layers, batch.input_ids, batch.attention_mask, batch.position_ids, last,
                     range(adapter.n_layers))  # [layer, n_sources, d_model]
    if stats is not None:  # one clean forward of the sources
        stats.baseline_evals += adapter.n_layers * sum(len(s) for s in sequences)
        stats.layer_calls += adapter.n_layers
    return resid.transpose(0, 1).to(_device(adapter))


# ------------------------------------------------------------------------------------------------ memory model
def _d_mlp(adapter: ArchitectureAdapter) -> int:
    cfg = adapter.config
    return getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * adapter.d_model


def row_bytes(adapter: ArchitectureAdapter, n_keys: int, n_query: int) -> int:
    """Peak bytes one trie state (one row of a group) holds during one layer call with ``n_query`` recomputed
    positions attending to ``n_keys`` keys (:func:`ivlens.estimate.costs.trie_state_bytes`, with the adapter's
    sizes and the weights' element size)."""
    return trie_state_bytes(adapter.d_model, adapter.n_heads, adapter.n_kv_heads, adapter.d_head, _d_mlp(adapter),
                            n_keys, n_query, adapter.embed.weight.element_size())


def kv_row_bytes(adapter: ArchitectureAdapter, n_tokens: int) -> int:
    """Bytes of one row's keys and values at every layer for ``n_tokens`` positions (what answer scoring keeps of
    each patched state until its group ends)."""
    return adapter.n_layers * 2 * adapter.n_kv_heads * adapter.d_head * n_tokens * adapter.embed.weight.element_size()


def metric_row_bytes(adapter: ArchitectureAdapter) -> int:
    """Peak bytes of one row's unembedding and metric reduction (:func:`ivlens.estimate.costs.metric_bytes`, at
    the unembedding's element size)."""
    return metric_bytes(adapter.d_vocab, adapter.d_model, adapter.unembed.weight.element_size())


def auto_batch_size(adapter: ArchitectureAdapter, n_keys: int, n_query: int, budget: int | None = None) -> int:
    """Rows per group (one bounded trie) that fit ``budget`` bytes (default: :func:`ivlens.budget.resolve_memory_budget`
    for the model's device)."""
    if budget is None:
        from ivlens.budget import resolve_memory_budget

        budget = resolve_memory_budget(None, _device(adapter))
    return max(1, budget // row_bytes(adapter, n_keys, n_query))


def metric_batch_size(adapter: ArchitectureAdapter, budget: int | None = None) -> int:
    """Rows unembedded and reduced at once within ``budget`` bytes."""
    if budget is None:
        from ivlens.budget import resolve_memory_budget

        budget = resolve_memory_budget(None, unembed_device(adapter))
    return max(1, budget // metric_row_bytes(adapter))


# ------------------------------------------------------------------------------------------------ execution
def _execute(adapter: ArchitectureAdapter, clean: CleanRun, ivs: torch.Tensor, rows: Sequence[RowSpec],
             keys: list[RowKey], where: np.ndarray, minimal: int,
             sink: Callable[[np.ndarray, np.ndarray, torch.Tensor], None], batch_size: int | None,
             memory_budget: int | None, stats: EngineStats | None, on_rows: Callable[[int], None] | None,
             tail: int | None = None, edit: Edit = "replace", record_kv: bool = False) -> None:
    """Run every group of the deduplicated ``keys``; ``sink(unique_idx, targets, resid)`` receives each group's
    final residuals: at the last position, ``[n, d_model]``, or with ``tail`` at the last ``min(tail, s)``
    positions, ``[n, min(tail, s), d_model]`` (``s``: the group's recomputed positions). With ``record_kv`` the
    sink gets a fourth argument, the rows' keys/values at every layer (:class:`PatchedKV`), and the groups are
    sized for them."""
    L = adapter.n_layers
    W = clean.batch.input_ids.shape[1]
    st = EngineStats(minimal_evals=minimal, rows=len(rows), unique_rows=len(keys))
    if memory_budget is None and batch_size is None:
        from ivlens.budget import resolve_memory_budget

        memory_budget = resolve_memory_budget(None, _device(adapter))

    def cap(s: int) -> int:
        if batch_size:
            return batch_size
        if record_kv:  # the states' keys/values of every layer stay until the group ends
            return max(1, memory_budget // (row_bytes(adapter, W, s) + kv_row_bytes(adapter, s)))
        return auto_batch_size(adapter, W, s, memory_budget)

    done = np.zeros(len(keys), dtype=np.int64)  # requested rows per unique row, for progress
    np.add.at(done, where, 1)
    ivs = ivs.to(dtype=clean.resid[0].dtype)
    per_layer_ivs: dict[int, torch.Tensor] = {}
    for g in schedule_groups(keys, clean.lengths, L, cap):
        new_kv: list | None = [] if record_kv else None
        h = _run_group(adapter, clean, ivs, g, per_layer_ivs, tail, edit, new_kv)  # [n_states, (tail,) d_model]
        targets = np.array([keys[u][0] for u in g.members], dtype=np.int64)
        final = h[torch.from_numpy(g.final).to(h.device)]
        if record_kv:
            sink(g.members, targets, final, PatchedKV(clean, g.s, targets, new_kv, states_per_layer(g)))
        else:
            sink(g.members, targets, final)
        del h, final, new_kv
        count_group(g, st)
        if on_rows is not None:
            on_rows(int(done[g.members].sum()))
    if stats is not None:
        stats.add(st)


def _take(x: torch.Tensor, idx: torch.Tensor, single: bool) -> torch.Tensor:
    """``x[idx]`` along dim 0; a broadcast view (no copy) when every index is the same."""
    if single:
        return x[idx[:1]].expand(len(idx), *x.shape[1:])
    return x[idx]


def _run_group(adapter: ArchitectureAdapter, clean: CleanRun, ivs: torch.Tensor, g: TrieGroup,
               per_layer_ivs: dict[int, torch.Tensor], tail: int | None = None, edit: Edit = "replace",
               new_kv: list | None = None) -> torch.Tensor:
    """Run one group's trie; the last position of every final state, ``[n_states, d_model]`` (with ``tail``: its
    last ``min(tail, s)`` positions, ``[n_states, min(tail, s), d_model]``).

    Entering layer ``k``, a row's state depends only on ``(target, source, S ∩ [0, k−1])``, so rows that agree on
    their patches below ``k`` share one state there; a row starts (``S ∩ [0, k] ≠ ∅``) from the clean
    ``resid_post[k]``. Each layer therefore runs once per *distinct* patch prefix, not once per row. Masks, positions
    and rotary tables are made once per target (and window / layer type / device) and gathered per state.
    ``new_kv``: a list to fill with, per layer, the keys/values ``[n_states, kv_head, s, d_head]`` of the states
    layer ``k`` ran on (``None`` where it ran on none).
    """
    s = g.s
    W = clean.batch.input_ids.shape[1]
    h: torch.Tensor | None = None  # states: [n_states, s, d_model]
    h_tgt: torch.Tensor | None = None  # target (clean batch row) of each state
    single = False  # every state has the same target
    per_target: dict = {}  # (what, window or layer type, device) -> [batch, ...] for every target
    for k, step in enumerate(g.steps):
        dev = layer_device(adapter, k)
        if h is not None and h.device != dev:
            h, h_tgt = h.to(dev), h_tgt.to(dev)
        if k > 0 and h is not None and h.shape[0]:
            # layer k on every state (prefixes ⊆ [0, k−1]); earlier positions' keys/values from the clean run
            window, kind = adapter.sliding_window(k), adapter.layer_type(k)
            if ("pos", dev) not in per_target:
                per_target["pos", dev] = clean.batch.position_ids.to(dev)[:, W - s:]  # [batch, s]
            pos_all = per_target["pos", dev]
            if ("mask", window, dev) not in per_target:  # [batch, 1, s, W]
                per_target["mask", window, dev] = adapter.layer_mask(k, clean.batch.attention_mask.to(dev), s, h.dtype)
            if ("pe", kind, dev) not in per_target:  # rotary (cos, sin), each [batch, s, d_head], or None
                per_target["pe", kind, dev] = _to(adapter.position_embeddings(h[:1], pos_all, k), dev)
            pe = per_target["pe", kind, dev]
            pos = _take(pos_all, h_tgt, single)
            mask = _take(per_target["mask", window, dev], h_tgt, single)
            pe = tuple(_take(x, h_tgt, single) for x in pe) if pe is not None else None
            cache = PrefixCache(_take(clean.keys[k][:, :, :W - s], h_tgt, single),
                                _take(clean.values[k][:, :, :W - s], h_tgt, single), record=new_kv is not None)
            h = adapter.run_layer(k, h, attention_mask=mask, position_ids=pos, position_embeddings=pe, cache=cache)
            if new_kv is not None:
                new_kv.append(cache.new)
            del mask, cache, pe
        elif new_kv is not None:
            new_kv.append(None)
        if step is None:
            continue
        # states after patching at layer k: prefixes S ∩ [0, k]
        parent = torch.from_numpy(step.parent).to(dev)
        tgt = torch.from_numpy(step.target).to(dev)
        carried = step.parent >= 0
        resid_k = clean.resid[k]
        if carried.all():
            h_new = h[parent]
        else:
            h_new = resid_k.new_empty((len(step.parent), s, adapter.d_model))
            if carried.any():
                ci = torch.from_numpy(np.flatnonzero(carried)).to(dev)
                h_new[ci] = h[parent[ci]]
            si = torch.from_numpy(np.flatnonzero(~carried)).to(dev)
            h_new[si] = resid_k[:, W - s:][tgt[si]]  # starting here: the clean residual after layer k
        if len(step.patch):
            if k not in per_layer_ivs:
                per_layer_ivs[k] = ivs[:, k].to(dev)
            vec = per_layer_ivs[k][torch.from_numpy(step.src).to(dev)]  # [n_patched, d_model]
            for width in np.unique(step.span):  # the span's columns of the suffix (one for a patch)
                sel = step.span == width
                pi = torch.from_numpy(step.patch[sel]).to(dev)
                v = vec[torch.from_numpy(np.flatnonzero(sel)).to(dev), None]  # [n, 1, d_model]
                if edit == "replace":  # the vector replaces the residual
                    h_new[pi, :width] = v
                else:  # the vector is added to it (steering)
                    h_new[pi, :width] += v
        h, h_tgt = h_new, tgt
        single = bool((step.target == step.target[0]).all())
    return h[:, -1] if tail is None else h[:, -min(tail, s):]


def _check_inputs(clean: CleanRun, rows: Sequence[RowSpec]) -> None:
    if rows and not clean.resid:
        raise ValueError("patched rows need a clean run with record=True")


@torch.no_grad()
def patched_metrics(adapter: ArchitectureAdapter, clean: CleanRun, ivs: torch.Tensor, rows: Sequence[RowSpec],
                    label: torch.Tensor, alt: torch.Tensor | None = None, space: torch.Tensor | None = None, *,
                    batch_size: int | None = None, memory_budget: int | None = None,
                    stats: EngineStats | None = None, on_rows: Callable[[int], None] | None = None,
                    edit: Edit = "replace") -> dict[str, torch.Tensor]:
    """The metrics of every patched row (:func:`ivlens.patching.metrics.label_metrics`), in bounded memory.

    Args:
        adapter: the target model's adapter.
        clean: the targets' clean run (``record=True``).
        ivs: ``[n_sources, layer, d_model]`` from :func:`source_vectors` (of this or another checkpoint of the same
            shape).
        rows: the configurations; ``RowSpec.target`` indexes ``clean``'s batch, ``RowSpec.source`` ``ivs``.
        label: ``[batch]`` label token per target; alt: ``[batch]`` alternative label (``-1``: none) or ``None``;
            space: ``[k]`` the label space's first tokens, or ``None``.
        batch_size: rows per group (one bounded trie); ``None``: from ``memory_budget``.
        memory_budget: bytes of working memory (``None``: :func:`ivlens.budget.resolve_memory_budget`'s default);
            sizes the groups and the unembedding sub-batches.
        stats: counters to add to.
        on_rows: called with the number of requested rows finished after each group (progress bars).
        edit: ``replace`` (patching: ``ivs`` replace the residual) or ``add`` (steering: they are added to it).

    Returns:
        ``{metric: [len(rows)]}`` on the CPU, the keys and dtypes of ``label_metrics`` (float32 metrics computed
        from float32 logits whatever the model's dtype).

    >>> m = patched_metrics(adapter, clean, ivs, rows, label=torch.tensor([42]))
    >>> m["logit"].shape
    """
    _check_inputs(clean, rows)
    udev = unembed_device(adapter)
    label, alt = label.to(udev), (alt.to(udev) if alt is not None else None)
    space = space.to(udev) if space is not None else None
    sub = batch_size or metric_batch_size(adapter, memory_budget)
    out: dict[str, torch.Tensor] = {}

    def sink(members: np.ndarray, targets: np.ndarray, resid: torch.Tensor) -> None:
        resid = resid.to(udev)
        t_all = torch.from_numpy(targets).to(udev)
        for i in range(0, len(members), sub):
            t = t_all[i:i + sub]
            logits = adapter.logits(resid[i:i + sub])  # [n, d_vocab]
            m = label_metrics(logits, label[t], alt[t] if alt is not None else None, space)
            del logits
            idx = torch.from_numpy(members[i:i + sub])
            for name, v in m.items():
                if name not in out:
                    out[name] = torch.empty(n_unique, dtype=v.dtype)
                out[name][idx] = v.cpu()

    keys, where, minimal = dedup_rows(rows, clean.lengths, adapter.n_layers, edit)
    n_unique = len(keys)
    _execute(adapter, clean, ivs, rows, keys, where, minimal, sink, batch_size, memory_budget, stats, on_rows,
             edit=edit)
    if not out:  # no rows: empty columns of the right dtypes
        m = label_metrics(clean.last_logits[:0], label[:0], alt[:0] if alt is not None else None, space)
        return {k: v.cpu() for k, v in m.items()}
    w = torch.from_numpy(where)
    return {k: v[w] for k, v in out.items()}


@torch.no_grad()
def patched_continuation_logprobs(adapter: ArchitectureAdapter, clean: CleanRun, ivs: torch.Tensor,
                                  rows: Sequence[RowSpec], continuations: torch.Tensor, *,
                                  batch_size: int | None = None, memory_budget: int | None = None,
                                  stats: EngineStats | None = None, on_rows: Callable[[int], None] | None = None,
                                  ) -> torch.Tensor:
    """Teacher-forced log-probability of each patched row's continuation (answer-level scoring), in bounded memory.

    Each clean-run sequence is a prompt followed by all but the last token of one continuation (a candidate
    label), so its last ``n`` positions predict the ``n`` continuation tokens. Patches apply at prompt positions
    as in :func:`patched_metrics`; every position from the patch on, the continuation's included, is recomputed
    with the patched residual in place, and :func:`ivlens.patching.metrics.continuation_logprobs` sums the
    log-probabilities of the continuation tokens.

    Args:
        adapter, clean, ivs, rows: as :func:`patched_metrics` (``clean`` of the prompt + continuation sequences;
            a row's ``token`` must lie in the prompt part).
        continuations: ``[batch, tail]`` each clean sequence's continuation tokens, right-aligned, ``-1`` on the
            left where shorter than ``tail`` (the longest).
        batch_size, memory_budget, stats, on_rows: as :func:`patched_metrics`.

    Returns:
        ``[len(rows)]`` float32 log-probabilities, on the CPU.
    """
    _check_inputs(clean, rows)
    udev = unembed_device(adapter)
    conts = continuations.to(udev)
    tail = conts.shape[1]
    n_cont = (continuations >= 0).sum(-1)  # [batch]
    for r in rows:
        if r.token > clean.lengths[r.target] - int(n_cont[r.target]):
            raise ValueError(f"patch position {r.token} lies in the continuation of sequence {r.target}")
    sub = max(1, (batch_size or metric_batch_size(adapter, memory_budget)) // tail)
    keys, where, minimal = dedup_rows(rows, clean.lengths, adapter.n_layers)
    out = torch.empty(len(keys), dtype=torch.float32)  # per distinct computation

    def sink(members: np.ndarray, targets: np.ndarray, resid: torch.Tensor) -> None:
        resid = resid.to(udev)  # [n, tail', d_model]
        t_all = torch.from_numpy(targets).to(udev)
        width = resid.shape[1]
        for i in range(0, len(members), sub):
            t = t_all[i:i + sub]
            logits = adapter.logits(resid[i:i + sub])  # [n, tail', d_vocab]
            lp = continuation_logprobs(logits, conts[t][:, tail - width:])
            del logits
            out[torch.from_numpy(members[i:i + sub])] = lp.cpu()

    _execute(adapter, clean, ivs, rows, keys, where, minimal, sink, batch_size, memory_budget, stats, on_rows,
             tail=tail)
    return out[torch.from_numpy(where)]


@torch.no_grad()
def clean_continuation_logprobs(adapter: ArchitectureAdapter, clean: CleanRun, continuations: torch.Tensor
                                ) -> torch.Tensor:
    """Unpatched teacher-forced log-probability of each clean sequence's continuation, ``[batch]`` float32 on
    the CPU (``clean`` recorded; ``continuations`` as :func:`patched_continuation_logprobs`)."""
    udev = unembed_device(adapter)
    conts = continuations.to(udev)
    last = clean.resid[-1][:, -conts.shape[1]:].to(udev)  # [batch, tail, d_model]
    return continuation_logprobs(adapter.logits(last), conts).cpu()


@torch.no_grad()
def patched_answer_logprobs(adapter: ArchitectureAdapter, clean: CleanRun, ivs: torch.Tensor, rows: Sequence[RowSpec],
                            continuations: Sequence[Sequence[Sequence[int]]], *, batch_size: int | None = None,
                            memory_budget: int | None = None, stats: EngineStats | None = None,
                            on_rows: Callable[[int], None] | None = None) -> torch.Tensor:
    """Teacher-forced log-probability of every candidate continuation of each patched row (answer-level scoring),
    with each patched prompt run once, in bounded memory.

    The engine runs the rows on the prompts alone, as :func:`patched_metrics` does, keeping every layer's keys and
    values of the recomputed positions (a row's keys/values are the clean run's before its patch position and up to
    its first patched layer); the candidates are then scored against them by
    :func:`ivlens.scoring.score_continuations`, which runs only the distinct prefixes of the candidates (a token
    trie), one token each, through the model's own forward. So a row costs its prompt suffix once plus the trie,
    not one prompt + candidate per candidate. Rows at the last position keep their whole layer set (the lower
    layers' patches change the keys/values the candidates read).

    Args:
        adapter, clean, ivs, rows: as :func:`patched_metrics` (``clean``: the target prompts, ``record=True``).
        continuations: per clean batch row, the ``k`` candidates' token ids (``k`` the same for every row).
        batch_size, memory_budget, stats, on_rows: as :func:`patched_metrics`; half the budget sizes the groups
            (their keys/values included), half the scoring of a group's rows.

    Returns:
        ``[len(rows), k]`` float32 log-probabilities, on the CPU.
    """
    from ivlens.scoring import PromptState, score_continuations

    _check_inputs(clean, rows)
    k = len(continuations[0]) if len(continuations) else 0
    if any(len(c) != k for c in continuations):
        raise ValueError("every target needs the same number of candidate continuations")
    if memory_budget is None:
        from ivlens.budget import resolve_memory_budget

        memory_budget = resolve_memory_budget(None, _device(adapter))
    udev = unembed_device(adapter)
    W = clean.batch.input_ids.shape[1]
    lengths = torch.tensor(clean.lengths)
    sub = max(1, (memory_budget // 4) // (kv_row_bytes(adapter, W) + metric_row_bytes(adapter)))
    keys, where, minimal = dedup_rows(rows, clean.lengths, adapter.n_layers, continued=True)
    out = torch.empty(len(keys), k, dtype=torch.float32)
    work = EngineStats()

    def sink(members: np.ndarray, targets: np.ndarray, resid: torch.Tensor, kv: PatchedKV) -> None:
        for i in range(0, len(members), sub):
            sel = np.arange(i, min(i + sub, len(members)))
            tgt = targets[sel]
            keys_, values_ = kv.full(sel)
            state = PromptState.from_key_values(adapter.model, keys_, values_, clean.batch.attention_mask[tgt],
                                                lengths[tgt], adapter.logits(resid[sel].to(udev)))
            del keys_, values_
            got = score_continuations(adapter.model, state, np.repeat(np.arange(len(sel)), k),
                                      [c for t in tgt for c in continuations[t]], memory_budget // 4)
            out[torch.from_numpy(members[sel])] = got.logprob.view(len(sel), k)
            work.executed_evals += got.nodes * adapter.n_layers
            work.layer_calls += got.forwards * adapter.n_layers
            del state

    _execute(adapter, clean, ivs, rows, keys, where, minimal, sink, batch_size, memory_budget // 2, stats, on_rows,
             record_kv=True)
    if stats is not None:
        stats.add(work)
    return out[torch.from_numpy(where)]


@torch.no_grad()
def clean_answer_logprobs(adapter: ArchitectureAdapter, clean: CleanRun,
                          continuations: Sequence[Sequence[Sequence[int]]], memory_budget: int | None = None,
                          stats: EngineStats | None = None) -> torch.Tensor:
    """Unpatched teacher-forced log-probability of every candidate continuation of each clean sequence, ``[batch,
    k]`` float32 on the CPU: the candidates are scored against the clean run's recorded keys/values
    (:func:`ivlens.scoring.score_continuations`; ``continuations`` as :func:`patched_answer_logprobs`)."""
    from ivlens.scoring import PromptState, score_continuations

    if not clean.keys:
        raise ValueError("answer scoring needs a clean run with record=True")
    k = len(continuations[0]) if len(continuations) else 0
    state = PromptState.from_key_values(adapter.model, clean.keys, clean.values, clean.batch.attention_mask,
                                        torch.tensor(clean.lengths), clean.last_logits)
    got = score_continuations(adapter.model, state, np.repeat(np.arange(len(continuations)), k),
                              [c for cs in continuations for c in cs], memory_budget)
    if stats is not None:
        stats.baseline_evals += got.nodes * adapter.n_layers
        stats.layer_calls += got.forwards * adapter.n_layers
    return got.logprob.view(len(continuations), k)


@torch.no_grad()
def patched_logits(adapter: ArchitectureAdapter, clean: CleanRun, ivs: torch.Tensor, rows: Sequence[RowSpec],
                   batch_size: int | None = None, stats: EngineStats | None = None,
                   on_rows: Callable[[int], None] | None = None,
                   memory_budget: int | None = None, edit: Edit = "replace") -> torch.Tensor:
    """Last-position logits of every patched row, ``[len(rows), d_vocab]`` (on the unembedding's device).

    The same engine as :func:`patched_metrics`, but the result grows with the rows (``d_vocab`` floats each): for
    tests and a few hundred rows, not for sweeps. Arguments as :func:`patched_metrics`.
    """
    _check_inputs(clean, rows)
    udev = unembed_device(adapter)
    store: dict[str, torch.Tensor] = {}

    def sink(members: np.ndarray, _targets: np.ndarray, resid: torch.Tensor) -> None:
        logits = adapter.logits(resid.to(udev))
        if "out" not in store:
            store["out"] = logits.new_empty((n_unique, adapter.d_vocab))
        store["out"][torch.from_numpy(members).to(udev)] = logits

    keys, where, minimal = dedup_rows(rows, clean.lengths, adapter.n_layers, edit)
    n_unique = len(keys)
    _execute(adapter, clean, ivs, rows, keys, where, minimal, sink, batch_size, memory_budget, stats, on_rows,
             edit=edit)
    if "out" not in store:
        return clean.last_logits[:0]
    return store["out"][torch.from_numpy(where).to(udev)]
