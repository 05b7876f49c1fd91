"""Teacher-forced scoring of candidate continuations, with each prompt run once.

For a prompt ``p`` and a continuation ``c = (c_0 … c_{m−1})`` (a candidate answer's tokens):

- ``logprob(p, c) = Σ_i log softmax(z(p ⧺ c_<i))[c_i]``, where ``z(x)`` is the model's logits after ``x``;
- ``greedy(p, c)``: every ``c_i`` is the argmax of its position (greedy decoding would produce ``c``).

**Sharing.** Every continuation of one prompt starts from the same prompt, and candidate labels share their first
tokens (every number after ``"Answer:"`` starts with a space token in many tokenizers; ``" 12"`` and ``" 13"`` share
``" 1"``). So:

1. each prompt runs **once**, keeping its keys/values (``use_cache=True``; transformers' own cache, so sliding
   windows, soft-caps and every other architecture detail stay the model's) and its last-position logits, which
   score every continuation's first token;
2. the continuations of a prompt form a **token trie** whose nodes are their distinct proper prefixes
   ``c_<i`` (``i ≥ 1``); each node runs once, one token, through the model's own forward with its parent's
   keys/values (the rows of a cache selected along the batch axis), and its logits score the next token of every
   continuation through it.

The work is the prompts plus one token per trie node, instead of one prompt + continuation forward per candidate:
150 numbers 0–150 after one prompt are 16 nodes, not 150 forwards. Nodes of the same depth run together, across
prompts; a node's position is its prompt's length plus its depth − 1, and its attention mask is the prompt's
(left padding included) followed by ones, so padded and unpadded prompts give the same scores.

**Memory.** Only the picked log-probabilities are kept (``log_softmax`` of one ``[rows, d_vocab]`` block at a time,
never ``[candidates, tail, d_vocab]``). Trie levels run in chunks of at most ``rows_per_chunk`` nodes, depth first,
so at most one chunk per level is alive; prompts run in chunks too. Both sizes come from one memory budget
(:func:`ivlens.budget.resolve_memory_budget`); the results do not depend on it.

Shapes: ``batch pos kv_head d_head d_vocab``; ``n`` counts continuations, ``N`` trie nodes.

>>> scores = teacher_forced_scores(model, [prompt_ids] * 3, [[345], [345, 12], [678]], pad_id=0)
>>> scores.logprob.shape, scores.greedy.dtype
(torch.Size([3]), torch.bool)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ivlens.budget import resolve_memory_budget
from ivlens.estimate.flops import ModelShape
from ivlens.tasks.prompts import pad_left


@dataclass(frozen=True)
class ContinuationScores:
    """``logprob: [n]`` float32 (the sum of the continuation tokens' log-probabilities) and ``greedy: [n]`` bool
    (every continuation token is the argmax of its position), on the CPU; ``nodes``: trie nodes run (one token
    each), ``forwards``: model forwards for them (work counters)."""

    logprob: torch.Tensor
    greedy: torch.Tensor
    nodes: int = 0
    forwards: int = 0


@dataclass
class PromptState:
    """Prompts run once: what continuations are scored against.

    ``cache``: the model's key/value cache (a transformers ``Cache``) of the left-padded prompt batch, batch row
    ``b`` = prompt ``b``; ``key_mask: [batch, W]`` 1 on real tokens, 0 on padding (``W``: the cached columns);
    ``lengths: [batch]`` real tokens per prompt (a continuation token at depth ``j`` sits at position
    ``lengths[b] + j − 1``); ``last_logits: [batch, d_vocab]`` the logits after each prompt's last token.
    """

    cache: object
    key_mask: torch.Tensor
    lengths: torch.Tensor
    last_logits: torch.Tensor

    @classmethod
    def from_key_values(cls, model, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor],
                        key_mask: torch.Tensor, lengths: torch.Tensor, last_logits: torch.Tensor) -> PromptState:
        """A state from recorded keys/values (``keys[l], values[l]: [batch, kv_head, W, d_head]`` after rotary, as
        the model's attention caches them: the patching engine's clean and patched runs), in a cache of the model's
        own layer types (sliding-window layers keep their window, as after a forward)."""
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=list(zip(keys, values, strict=True)), config=model.config)
        return cls(cache, key_mask, lengths, last_logits)


def input_device(model) -> torch.device:
    """Where token ids go: the input embedding's device (the first device of a model spread by accelerate)."""
    w = model.get_input_embeddings().weight
    return w.device if w.device.type != "meta" else torch.device("cpu")


# --------------------------------------------------------------------------------------------- memory
def kv_bytes_per_token(shape: ModelShape, element_size: int) -> int:
    """Bytes of one token's keys and values in every layer."""
    return shape.n_layers * 2 * shape.n_kv_heads * shape.d_head * element_size


def prompt_row_bytes(shape: ModelShape, width: int, element_size: int) -> int:
    """Peak bytes of one prompt row of width ``width`` in the cached forward: its keys/values, one layer's
    activations (norms, q/k/v, MLP hidden, residual adds), the attention scores and weights (float32), and the last
    position's logits."""
    d, H, dh, KV = shape.d_model, shape.n_heads, shape.d_head, shape.n_kv_heads
    acts = width * (10 * d + 2 * H * dh + 4 * KV * dh + 3 * shape.d_mlp) * element_size
    return (kv_bytes_per_token(shape, element_size) * width + acts + 3 * H * width * width * 4
            + shape.d_vocab * (element_size + 8))


def node_row_bytes(shape: ModelShape, n_keys: int, element_size: int) -> int:
    """Peak bytes of one trie node's step: its parent's keys/values selected for it (``n_keys`` tokens; the step
    replaces them layer by layer with copies one token longer, so one layer's more), the one-token activations, and
    its logits with their float32 log-softmax."""
    d, H = shape.d_model, shape.n_heads
    acts = (10 * d + 3 * shape.d_mlp) * element_size + 3 * H * n_keys * 4
    kv = kv_bytes_per_token(shape, element_size) * n_keys
    return kv + kv // max(1, shape.n_layers) + acts + shape.d_vocab * (element_size + 12)


def _shape_and_size(model) -> tuple[ModelShape, int]:
    return ModelShape.from_config(model.config, n_params=1), model.get_input_embeddings().weight.element_size()


# --------------------------------------------------------------------------------------------- the trie
@dataclass(frozen=True)
class ContinuationTrie:
    """The token trie of continuations, level by level (pure data, numpy; no model).

    Level 0 holds the prompts' rows (``owner[0] = arange(batch)``); level ``d ≥ 1`` the distinct prefixes
    ``c_<d`` of length ``d`` that precede a token, sorted by parent, so the children of a run of parents are a run:
    ``owner[d]: [N_d]`` the prompt row, ``parent[d]: [N_d]`` the parent's index in level ``d − 1``,
    ``token[d]: [N_d]`` the token the node feeds (its prefix's last token). Picks: continuation ``pick_cont[d]``'s
    token ``pick_token[d]`` is scored by level-``d`` node ``pick_node[d]`` (sorted by node)."""

    owner: list[np.ndarray]
    parent: list[np.ndarray]
    token: list[np.ndarray]
    pick_node: list[np.ndarray]
    pick_token: list[np.ndarray]
    pick_cont: list[np.ndarray]
    n_continuations: int

    @property
    def n_nodes(self) -> int:
        """Nodes that run (levels ``≥ 1``)."""
        return sum(len(t) for t in self.token[1:])

    def children(self, d: int, lo: int, hi: int) -> tuple[int, int]:
        """The level-``d + 1`` nodes whose parents are level-``d`` nodes ``lo … hi − 1``: a range ``[a, b)``."""
        if d + 1 >= len(self.parent):
            return 0, 0
        p = self.parent[d + 1]
        return int(np.searchsorted(p, lo)), int(np.searchsorted(p, hi))

    @classmethod
    def build(cls, n_prompts: int, owners: Sequence[int], continuations: Sequence[Sequence[int]]
              ) -> ContinuationTrie:
        """The trie of ``continuations[i]`` after prompt row ``owners[i]`` (``0 ≤ owners[i] < n_prompts``)."""
        if len(owners) != len(continuations):
            raise ValueError(f"{len(owners)} owners for {len(continuations)} continuations")
        owners = [int(o) for o in owners]
        continuations = [tuple(int(t) for t in c) for c in continuations]
        depth = max((len(c) for c in continuations), default=0)
        if any(len(c) == 0 for c in continuations):
            raise ValueError("an empty continuation cannot be scored: every candidate needs at least one token")
        index: list[dict] = [{(o,): o for o in range(n_prompts)}]  # level -> {(owner, *prefix): node index}
        owner, parent, token = [np.arange(n_prompts)], [np.full(n_prompts, -1)], [np.full(n_prompts, -1)]
        for d in range(1, depth):
            keys = {}
            for o, c in zip(owners, continuations, strict=True):
                if len(c) > d:
                    keys.setdefault((o, *c[:d]), None)
            prev = index[d - 1]
            ordered = sorted(keys, key=lambda k: prev[k[:-1]])  # by parent (stable: first seen within a parent)
            index.append({k: i for i, k in enumerate(ordered)})
            owner.append(np.array([k[0] for k in ordered], dtype=np.int64))
            parent.append(np.array([prev[k[:-1]] for k in ordered], dtype=np.int64))
            token.append(np.array([k[-1] for k in ordered], dtype=np.int64))
        pick_node, pick_token, pick_cont = [], [], []
        for d in range(depth):
            picks = [(index[d][(o, *c[:d])], c[d], i) for i, (o, c) in enumerate(zip(owners, continuations,
                                                                                       strict=True)) if len(c) > d]
            picks.sort()
            arr = np.array(picks, dtype=np.int64).reshape(-1, 3)
            pick_node.append(arr[:, 0])
            pick_token.append(arr[:, 1])
            pick_cont.append(arr[:, 2])
        return cls(owner, parent, token, pick_node, pick_token, pick_cont, len(continuations))


# --------------------------------------------------------------------------------------------- running
def select_rows(cache, rows: torch.Tensor):
    """A new cache holding batch rows ``rows`` of ``cache`` (repeats allowed); ``cache`` itself is left as it was
    (a step appends to the copy by concatenation, never in place)."""
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    out.batch_select_indices(rows)
    return out


@torch.no_grad()
def run_prompts(model, prompts: Sequence[Sequence[int]], pad_id: int) -> PromptState:
    """Run ``prompts`` (token ids) once as one left-padded batch with the model's cache (see :class:`PromptState`)."""
    dev = input_device(model)
    batch = pad_left([tuple(p) for p in prompts], pad_id).to(dev)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                use_cache=True, logits_to_keep=1)
    lengths = batch.attention_mask.sum(-1)
    return PromptState(out.cache, batch.attention_mask, lengths, out.logits[:, -1])


@torch.no_grad()
def score_continuations(model, state: PromptState, owners: Sequence[int], continuations: Sequence[Sequence[int]],
                        memory_budget: int | None = None) -> ContinuationScores:
    """Score ``continuations[i]`` after prompt row ``owners[i]`` of ``state`` (see the module docstring).

    Args:
        model: the causal LM ``state`` was made with (transformers; its own forward runs every trie node).
        state: the prompts, run once (:func:`run_prompts` or :meth:`PromptState.from_key_values`).
        owners: ``[n]`` prompt row of each continuation.
        continuations: ``n`` token-id sequences, each at least one token.
        memory_budget: bytes for one chunk of trie nodes per level (``None``: the device's default budget).

    Returns:
        :class:`ContinuationScores` of the ``n`` continuations.
    """
    trie = ContinuationTrie.build(state.last_logits.shape[0], owners, continuations)
    logprob = torch.zeros(trie.n_continuations, dtype=torch.float32)
    greedy = torch.ones(trie.n_continuations, dtype=torch.bool)
    if trie.n_continuations == 0:
        return ContinuationScores(logprob, greedy)
    dev = input_device(model)
    budget = memory_budget if memory_budget is not None else resolve_memory_budget(None, dev)
    shape, elt = _shape_and_size(model)
    levels = len(trie.token)
    width = state.key_mask.shape[1]
    per_row = node_row_bytes(shape, width + levels, elt)
    cap = max(1, budget // (max(1, levels - 1) * per_row))  # one chunk per level alive at a time
    forwards = [0]

    def pick(d: int, lo: int, hi: int, logits: torch.Tensor) -> None:
        """Score the level-``d`` picks of nodes ``lo … hi − 1`` from their logits ``[hi − lo, d_vocab]``."""
        nodes = trie.pick_node[d]
        a, b = int(np.searchsorted(nodes, lo)), int(np.searchsorted(nodes, hi))
        if a == b:
            return
        z = logits.float()
        rows = torch.from_numpy(nodes[a:b] - lo).to(z.device)
        tok = torch.from_numpy(trie.pick_token[d][a:b]).to(z.device)
        logp = z.log_softmax(-1)  # [hi − lo, d_vocab]
        picked = logp[rows, tok]
        top = z.argmax(-1)[rows] == tok  # first maximum, as torch.argmax over a full forward's logits
        cont = torch.from_numpy(trie.pick_cont[d][a:b])
        logprob.index_add_(0, cont, picked.cpu())
        greedy[cont] &= top.cpu()

    def descend(d: int, lo: int, hi: int, parent_cache, parent_lo: int) -> None:
        """Run level-``d`` nodes ``lo … hi − 1`` (their parents are rows ``parent − parent_lo`` of ``parent_cache``)
        in chunks, each followed by its subtree."""
        for a in range(lo, hi, cap):
            b = min(hi, a + cap)
            rows = torch.from_numpy(trie.parent[d][a:b] - parent_lo)
            owner = torch.from_numpy(trie.owner[d][a:b])
            cache = select_rows(parent_cache, rows)
            prompt_mask = key_mask[owner.to(key_mask.device)].to(dev)
            mask = torch.cat([prompt_mask, prompt_mask.new_ones((b - a, d))], dim=1)  # [n, W + d]
            position = (lengths[owner] + d - 1)[:, None].to(dev)  # [n, 1]
            ids = torch.from_numpy(trie.token[d][a:b])[:, None].to(dev)
            forwards[0] += 1
            out = model(input_ids=ids, attention_mask=mask, position_ids=position, cache=cache,
                        use_cache=True, logits_to_keep=1)
            pick(d, a, b, out.logits[:, -1])
            c_lo, c_hi = trie.children(d, a, b)
            if c_hi > c_lo:
                descend(d + 1, c_lo, c_hi, out.cache, a)
            del out, cache

    key_mask, lengths = state.key_mask, state.lengths.cpu()
    pick(0, 0, state.last_logits.shape[0], state.last_logits)
    c_lo, c_hi = trie.children(0, 0, state.last_logits.shape[0])
    if c_hi > c_lo:
        descend(1, c_lo, c_hi, state.cache, 0)
    return ContinuationScores(logprob, greedy, trie.n_nodes, forwards[0])


def prompts_per_chunk(model, width: int, memory_budget: int | None = None) -> int:
    """Prompts of width ``width`` run (and kept, with their caches) at once within the budget; at least 1."""
    shape, elt = _shape_and_size(model)
    budget = memory_budget if memory_budget is not None else resolve_memory_budget(None, input_device(model))
    return max(1, budget // (2 * prompt_row_bytes(shape, width, elt)))


@torch.no_grad()
def teacher_forced_scores(model, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                          pad_id: int, memory_budget: int | None = None) -> ContinuationScores:
    """Score each ``continuations[i]`` after ``prompts[i]`` (token ids); identical prompts run once.

    Args:
        model: a transformers causal LM.
        prompts, continuations: ``n`` pairs of token-id sequences (a continuation: at least one token).
        pad_id: the token that left-pads prompts of a batch (masked out; any id works).
        memory_budget: bytes of working memory (``None``: :func:`ivlens.budget.resolve_memory_budget`'s default);
            half sizes the prompt chunks, half the trie's node chunks.

    Returns:
        :class:`ContinuationScores` of the ``n`` pairs, in order.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts for {len(continuations)} continuations")
    budget = memory_budget if memory_budget is not None else resolve_memory_budget(None, input_device(model))
    distinct: dict[tuple[int, ...], int] = {}
    which = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
    unique = list(distinct)
    logprob = torch.zeros(len(prompts), dtype=torch.float32)
    greedy = torch.ones(len(prompts), dtype=torch.bool)
    by_prompt: list[list[int]] = [[] for _ in unique]
    for i, u in enumerate(which):
        by_prompt[u].append(i)
    nodes = forwards = 0
    start = 0
    while start < len(unique):
        n = prompts_per_chunk(model, max(len(p) for p in unique[start:start + 64]), budget // 2)
        chunk = range(start, min(len(unique), start + min(n, 64)))
        state = run_prompts(model, [unique[u] for u in chunk], pad_id)
        members = [(u - start, i) for u in chunk for i in by_prompt[u]]
        got = score_continuations(model, state, [o for o, _ in members], [continuations[i] for _, i in members],
                                  budget // 2)
        idx = torch.tensor([i for _, i in members], dtype=torch.long)
        logprob[idx], greedy[idx] = got.logprob, got.greedy
        nodes, forwards = nodes + got.nodes, forwards + got.forwards + 1  # + 1: the prompts' forward
        del state
        start = chunk.stop
    return ContinuationScores(logprob, greedy, nodes, forwards)
