"""The work of each long command, as counts: what ``--dry-run`` prints before anything runs.

Every function here is pure: it takes sizes (:class:`~ivlens.estimate.flops.ModelShape`), prompt lengths and the
command's options, and returns a :class:`CostEstimate`: counts (rows, forward passes, tokens), matrix FLOPs, the
number of small kernel calls, bytes moved by memory-bound steps, and the parts of peak memory. :func:`seconds` turns
a cost estimate into time with the rates of :class:`Rates` (measured by :mod:`ivlens.estimate.calibrate`):

    time = FLOPs / GEMM rate  +  layer calls × layer latency  +  small ops × op latency  +  bytes / copy rate

(on a CPU: CPU-seconds of one thread, divided by the share of the cores the run will get). The layer-call term
dominates
small models (the organisms: 6 layers of width 256), the FLOP term real ones. The constants below (Python work
per result row, process start, loading, figures, bytes per result row, the interpreter's own memory) were
fitted on this project's 2-core CPU against measured runs (``benchmarks/estimate_check.py`` prints the
ratios); they count small operations, not seconds, so they carry over to other machines through the measured
op latency.

Peak memory = the runtime (Python, torch, transformers, pandas) + the weights in the chosen dtype + what the
command holds at its peak (clean runs and a batch for patching, a batch's logits for probing, ``L·H·T²``
attention patterns and edge contributions for tracing, ...).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .flops import (
    ModelShape,
    attention_flops,
    layer_flops,
    mlp_flops,
    projection_flops,
    prompt_flops,
    unembed_flops,
)

#: Memory of the interpreter with torch, transformers, pandas and ivlens imported (measured: ~600 MB).
RUNTIME_BYTES = 600 << 20
#: Python work per result row (metrics gathered, a record built, Parquet), in units of one op latency.
OPS_PER_ROW = 12
#: Bytes per result row held while a chunk is being turned into records, and per row of the final table.
ROW_RECORD_BYTES = 2500
ROW_TABLE_BYTES = 600
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: Starting the interpreter and importing torch, transformers, pandas and ivlens, in op latencies (~4.6 CPU-seconds here).
IMPORT_OPS = 3_800_000
#: Loading weights reads and copies each byte about this many times (safetensors: read, cast, place).
LOAD_COPIES = 3
#: Dequantizing a GGUF checkpoint and converting its tokenizer, op latencies per parameter (~0.11 CPU-µs here).
GGUF_OPS_PER_PARAM = 0.09
#: Python work of one ``transformers.Trainer`` step around the model's own (data loader, collator, callbacks,
#: logging), in op latencies (fitted: build stage times against their measured steps on this project's CPU).
TRAINER_OPS_PER_STEP = 5_000
#: One figure written with matplotlib (the first also imports it), in op latencies.
FIGURE_OPS = 250_000


@dataclass(frozen=True)
class Rates:
    """A device's measured speeds: ``gemm`` FLOP/s on the model's shapes, ``op_latency`` seconds per small kernel
    call, ``copy`` bytes/s of streaming memory traffic, ``layer_latency`` the fixed cost of one decoder-layer
    call (dispatch, small kernels) on a narrow copy of the model's own layer (:mod:`ivlens.estimate.calibrate`).

    On a CPU they are per CPU-second of one thread, and ``threads`` (torch's intra-op threads), ``cores`` and
    ``others`` (other runnable work, the load average) say how many cores a run will get (:meth:`parallel_cores`
    for the matrix products and timed steps, :meth:`barrier_cores` for the rest). On a GPU the rates are per wall
    second and ``cores`` is 0 (no sharing model)."""

    gemm: float
    op_latency: float
    copy: float
    layer_latency: float = 0.0
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    cores: int = 0
    others: float = 0.0

    def parallel_cores(self) -> float:
        """Cores the matrix products get: all ``threads`` on an idle machine, a fair share of a busy one
        (``cores · threads / (others + threads)``; measured: SmolLM2 triplets at load 12 got 0.29 of 2 cores)."""
        if not self.cores:
            return 1.0
        k = min(self.threads, self.cores)
        return k if self.others + k <= self.cores else self.cores * k / (self.others + k)

    def barrier_cores(self) -> float:
        """Cores the rest gets (layer calls of small tensors, small kernels, Python): at most one, and on a busy
        machine one thread's share, ``cores / (others + threads)``, because each small parallel kernel waits at
        its barrier for the descheduled thread (measured: organism runs at load 14-16 got 0.09-0.12 cores)."""
        if not self.cores:
            return 1.0
        k = min(self.threads, self.cores)
        return 1.0 if self.others + k <= self.cores else self.cores / (self.others + k)



@dataclass
class CostEstimate:
    """One command's work on one model (or several: :meth:`merge`)."""

    command: str
    model: str
    counts: dict[str, int] = field(default_factory=dict)
    flops: float = 0.0
    layer_calls: float = 0.0
    kernel_calls: float = 0.0
    stream_bytes: float = 0.0
    memory: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fits: bool = True
    #: work timed directly by a micro-benchmark of the same step (CPU-seconds of one thread on a CPU), and the
    #: FLOPs it covers; ``serial_seconds``: timed work that runs on one thread in the run too (probe fits)
    measured_seconds: float = 0.0
    measured_flops: float = 0.0
    serial_seconds: float = 0.0
    #: work timed in wall seconds on the command's own threads as the machine is loaded now (the organism build's
    #: training steps), and the FLOPs it covers: taken as it is, neither shared out over cores nor scaled by load
    wall_seconds: float = 0.0
    wall_flops: float = 0.0
    #: torch threads the command runs with when it fixes them (the organism build); ``None``: the process's
    threads: int | None = None

    @property
    def peak_bytes(self) -> int:
        return int(sum(self.memory.values()))

    def to_dict(self, rates: Rates | None = None) -> dict:
        out = {"command": self.command, "model": self.model, "counts": dict(self.counts), "flops": self.flops,
               "layer_calls": self.layer_calls, "kernel_calls": self.kernel_calls, "stream_bytes": self.stream_bytes, "memory": dict(self.memory),
               "peak_bytes": self.peak_bytes, "notes": list(self.notes), "fits": self.fits}
        if rates is not None:
            out["seconds"] = seconds(self, rates)
        return out


def seconds(cost: CostEstimate, rates: Rates) -> float:
    """Estimated wall time of ``cost`` at ``rates`` (see the module docstring and :class:`Rates`): CPU-seconds
    divided by the cores the run gets now."""
    return cost.wall_seconds + (
        (cost.flops - cost.measured_flops - cost.wall_flops) / rates.gemm + cost.measured_seconds) / rates.parallel_cores() + (
            (cost.layer_calls * rates.layer_latency + cost.kernel_calls * rates.op_latency
             + cost.stream_bytes / rates.copy + cost.serial_seconds) / rates.barrier_cores())


def add_startup(cost: CostEstimate, shape: ModelShape, dtype: str, *, imports: bool = True,
                gguf: bool = False) -> CostEstimate:
    """Add starting the process (``imports``) and loading ``shape``'s weights to ``cost``; a GGUF checkpoint is
    dequantized while loading, which also holds a second copy of the weights for a moment."""
    cost.kernel_calls += (IMPORT_OPS if imports else 0) + (shape.n_params * GGUF_OPS_PER_PARAM if gguf else 0)
    cost.stream_bytes += LOAD_COPIES * weight_bytes(shape, dtype)
    if gguf:
        cost.memory["GGUF dequantization (while loading)"] = weight_bytes(shape, "float32")
    return cost


def add_figures(cost: CostEstimate, n: int) -> CostEstimate:
    """Add writing ``n`` matplotlib figures (and importing matplotlib for the first) to ``cost``."""
    if n:
        cost.kernel_calls += FIGURE_OPS * (n + 2)
        cost.counts["figures"] = cost.counts.get("figures", 0) + n
    return cost


def weight_bytes(shape: ModelShape, dtype: str) -> int:
    return shape.n_params * DTYPE_BYTES[dtype]


def _base_memory(shape: ModelShape, dtype: str) -> dict[str, int]:
    return {"runtime": RUNTIME_BYTES, "weights": weight_bytes(shape, dtype)}


# --------------------------------------------------------------------------------------------- patch
def trie_states(layer_sets: Sequence[tuple[int, ...]], n_layers: int, last: bool) -> int:
    """Layer evaluations per recomputed token for one (target, source, position) of the patching engine: the
    number of distinct non-empty patch prefixes ``S ∩ [0, k−1]`` entering each layer ``k ≥ 1`` (the engine's
    trie). At the **last** position a set runs as its highest layer alone, so only those count.

    Remembered per distinct argument (:func:`_trie_states`): a dry run asks again for every chunk, model and task of
    the same plan (a 7B study's triplets: 4,960 sets, counted once instead of 144 times)."""
    return _trie_states(tuple(map(tuple, layer_sets)), n_layers, last)


@functools.lru_cache(maxsize=64)
def _trie_states(layer_sets: tuple[tuple[int, ...], ...], n_layers: int, last: bool) -> int:
    sets = {(s[-1],) for s in layer_sets} if last else set(layer_sets)
    total = 0
    for k in range(1, n_layers):
        total += len({p for p in (tuple(x for x in s if x < k) for s in sets) if p})
    return total


def trie_state_bytes(d_model: int, n_heads: int, n_kv_heads: int, d_head: int, d_mlp: int, n_keys: int, n_query: int,
                     elt: int) -> int:
    """Peak bytes one trie state (one row of a group) of the patching engine holds during one layer call with
    ``n_query`` recomputed positions attending to ``n_keys`` keys, at ``elt`` bytes per element: the state before,
    after and re-gathered; the layer's activations (norms, q/k/v before and after rotary, the attention output, the
    gated MLP's three hidden vectors, the residual adds); the prefix keys/values gathered from the clean cache and
    concatenated with the new ones, and repeated for grouped-query heads; scores and weights; the mask and rotary
    tables; index vectors. The one memory model of a patched row: the engine
    (:func:`ivlens.patching.engine.row_bytes`, sizes from the adapter) and the dry run (:func:`patch_row_bytes`,
    sizes from the config) both call it."""
    d, H, KV, dh = d_model, n_heads, n_kv_heads, d_head
    elems = (n_query * (10 * d + 4 * H * dh + 4 * KV * dh + 3 * d_mlp)  # states and activations per token
             + 2 * KV * dh * (n_keys - n_query)  # prefix keys/values gathered from the clean run
             + 2 * KV * dh * n_keys  # concatenated with this call's
             + 2 * H * dh * n_keys  # repeated for grouped-query attention (eager)
             + 3 * H * n_query * n_keys  # scores, softmax in float32, weights
             + n_query * n_keys + 2 * n_query * dh)  # mask, rotary cos/sin
    return elems * elt + 64


def patch_row_bytes(shape: ModelShape, n_keys: int, n_query: int, dtype: str = "float32") -> int:
    """:func:`trie_state_bytes` of ``shape`` in ``dtype``: one trie state in one layer call of the patching engine."""
    return trie_state_bytes(shape.d_model, shape.n_heads, shape.n_kv_heads, shape.d_head, shape.d_mlp, n_keys, n_query,
                            DTYPE_BYTES[dtype])


def metric_bytes(d_vocab: int, d_model: int, elt: int) -> int:
    """Peak bytes of one row's unembedding and metric reduction: the logits at ``elt`` bytes per element, their
    float32 copy, the log-sum-exp temporary, the rank comparison and its count (the engine's
    :func:`ivlens.patching.engine.metric_row_bytes` and the dry run's :func:`patch_metric_row_bytes`)."""
    return d_vocab * (elt + 4 + 4 + 1 + 8) + 8 * d_model


def patch_metric_row_bytes(shape: ModelShape, dtype: str = "float32") -> int:
    """:func:`metric_bytes` of ``shape`` in ``dtype``."""
    return metric_bytes(shape.d_vocab, shape.d_model, DTYPE_BYTES[dtype])


@dataclass(frozen=True)
class TargetShape:
    """A target prompt's shape for the cost model: one sample as the patching engine sees it (target length,
    patched token indices, instructed-prompt length). Not :data:`ivlens.specs.PatchTarget`, the option naming
    which query-only prompt is the target (``bare`` / ``formatted``)."""

    n_tokens: int
    positions: tuple[int, ...]
    instructed_tokens: int


#: ``engine_work(chunk, layer_sets, n_layers, group_rows) -> (executed_evals, unembed_rows, layer_calls)``: the
#: engine's own count for one chunk of targets (``ivlens.patching.trie.scheduled_work``), passed in by the caller.
EngineWork = Callable[[Sequence[TargetShape], Sequence[tuple[int, ...]], int, Callable[[int], int]],
                      tuple[int, int, int]]


def trie_work(chunk: Sequence[TargetShape], layer_sets: Sequence[tuple[int, ...]], n_layers: int,
              group_rows: Callable[[int], int],
              position: Callable[[bool], tuple[int, int]] | None = None) -> tuple[int, int, int]:
    """The engine's work for one chunk: ``(executed_evals, unembed_rows, layer_calls)``. Each patched position is a
    trie over the suffix from it (``s = n_tokens − position`` columns) whose states and rows do not depend on the
    target's length, only on whether the position is the last: ``position(last) -> (states per column, rows)``
    (default: :func:`trie_states` and the sets, the highest layers alone at the last position; the patching dry
    run passes the engine's own scheduler). One group per ``group_rows(s)`` rows of each suffix length ``s``
    (exact when every group holds whole targets)."""
    if position is None:
        highest = len({x[-1] for x in layer_sets})

        def position(last: bool) -> tuple[int, int]:
            return trie_states(layer_sets, n_layers, last), highest if last else len(layer_sets)

    evals = unembed = 0
    per_s: dict[int, int] = {}
    cache: dict[bool, tuple[int, int]] = {}
    for t in chunk:
        for p in t.positions:
            last = p == t.n_tokens - 1
            if last not in cache:
                cache[last] = position(last)
            states, rows = cache[last]
            evals += states * (t.n_tokens - p)
            unembed += rows
            per_s[t.n_tokens - p] = per_s.get(t.n_tokens - p, 0) + rows
    calls = sum(math.ceil(n / max(1, group_rows(s))) * (n_layers - 1) for s, n in per_s.items())
    return evals, unembed, calls


def patch_cost(shape: ModelShape, targets: Sequence[TargetShape], layer_sets: Sequence[tuple[int, ...]],
               source_tokens: int, *, dtype: str = "float32", chunk_size: int = 25, budget: int = 1 << 30,
               batch_size: int | None = None, n_positions: int | None = None, engine_work: EngineWork | None = None,
               model: str = "", answer: AnswerTrie | None = None) -> CostEstimate:
    """A patch sweep of ``layer_sets`` at each target's positions (transfer or contrastive: the same work).

    Work per model: one source run; per chunk of ``chunk_size`` samples, a padded clean run of the targets
    (recording residuals and keys/values) and an unpatched instructed run; then the patched rows through the
    engine's bounded tries (``engine_work``, default :func:`trie_work`), one unembedding and metric reduction
    per distinct row. ``n_positions``: positions requested per sample (default: each target's distinct
    ``positions``; ``first`` and ``last`` of a one-token target are one computation but two result rows).

    ``answer`` (``--score answer``): the engine runs the same rows on the targets, keeping every row's keys/values
    (groups sized for them in half the budget; ``engine_work`` must count without the last-position identity), and
    each distinct row, target-only run and instructed run scores the candidates' trie against them
    (:func:`answer_scoring_flops`; a quarter of the budget per scoring batch).
    """
    L, n = shape.n_layers, len(targets)
    engine_work = engine_work or trie_work
    cost = CostEstimate("patch", model)
    rows = (n * n_positions if n_positions else sum(len(t.positions) for t in targets)) * len(layer_sets)
    chunks = [targets[i:i + chunk_size] for i in range(0, n, chunk_size)]
    flops = prompt_flops(shape, source_tokens)
    evals = unembed = calls = answer_nodes = 0
    base_calls = L
    widest = 0
    for c in chunks:
        w_t, w_i = max(t.n_tokens for t in c), max(t.instructed_tokens for t in c)
        widest = max(widest, w_t)
        flops += len(c) * (prompt_flops(shape, w_t) + prompt_flops(shape, w_i))  # padding is computed too
        base_calls += 2 * L

        def group_rows(s: int, w_t: int = w_t) -> int:
            if answer is not None:  # the states' keys/values of every layer are kept, in half the budget
                return batch_size or max(1, budget // 2 // (patch_row_bytes(shape, w_t, s, dtype) + kv_bytes(shape, s, dtype)))
            return batch_size or max(1, budget // patch_row_bytes(shape, w_t, s, dtype))

        e, u, k = engine_work(c, layer_sets, L, group_rows)
        evals, unembed, calls = evals + e, unembed + u, calls + k
        # each executed layer-token evaluation attends to about the whole padded target
        flops += e * (projection_flops(shape) + mlp_flops(shape) + attention_flops(shape, w_t))
        if answer is not None:  # every distinct row and both baselines of every sample score the candidates
            w_i = max(t.instructed_tokens for t in c)
            flops += (u + len(c)) * answer_scoring_flops(shape, w_t, answer) + len(c) * answer_scoring_flops(
                shape, w_i, answer)
            sub = max(1, budget // 4 // (kv_bytes(shape, w_t, dtype) + patch_metric_row_bytes(shape, dtype)))
            node_cap = max(1, budget // 4 // (len(answer.nodes) * kv_bytes(shape, w_t + len(answer.nodes), dtype)))
            scoring = math.ceil(u / sub) * answer_forwards(min(u, sub), answer, node_cap) \
                + 2 * answer_forwards(len(c), answer, node_cap)
            calls += scoring * L
            cost.stream_bytes += scoring * weight_bytes(shape, dtype)  # few rows per forward: bound by the weights
            answer_nodes += (u + 2 * len(c)) * answer.n_nodes
    flops += unembed * unembed_flops(shape)
    cost.counts = {"samples": n, "rows": rows, "distinct_rows": unembed, "layer_sets": len(layer_sets),
                   "forward_passes": 1 + 2 * n, "layer_token_evals": evals, "layer_calls": calls + base_calls}
    cost.flops = flops
    cost.layer_calls = calls + base_calls
    cost.kernel_calls = rows * OPS_PER_ROW
    if answer is not None:
        cost.counts |= {"answer_candidates": answer.candidates, "answer_trie_nodes": answer_nodes}
        cost.kernel_calls += 2 * n * answer.candidates * OPS_PER_CANDIDATE
    cost.stream_bytes += unembed * shape.d_vocab * 4 * 6  # log-sum-exp, ranks, top-1 over each logits row
    # memory: the clean run of one chunk (residuals + keys/values of every layer), one group, the records
    c = min(chunk_size, n)
    clean = L * c * widest * (shape.d_model + 2 * shape.n_kv_heads * shape.d_head) * DTYPE_BYTES[dtype]
    s_max = max(t.n_tokens - min(t.positions) for t in targets)
    need = max(patch_row_bytes(shape, widest, s_max, dtype) * min(rows, 1 << 20), patch_metric_row_bytes(shape, dtype))
    rows_chunk = rows * c // max(1, n)
    cost.memory = {**_base_memory(shape, dtype), "clean runs (one chunk)": clean, "engine working set": min(budget, need),
                   "row records (one chunk)": rows_chunk * ROW_RECORD_BYTES, "result table": rows * ROW_TABLE_BYTES}
    return cost


# --------------------------------------------------------------------------------------------- answer scoring
#: Python work per (prompt, candidate label) of answer-level scoring (tokenising the label after the prompt, its
#: place in the trie, its picked log-probability), in op latencies.
OPS_PER_CANDIDATE = 60


@dataclass(frozen=True)
class AnswerTrie:
    """Answer-level scoring's candidates after one prompt as :mod:`ivlens.scoring` runs them: ``candidates`` labels,
    whose token trie has ``nodes[d − 1]`` nodes at depth ``d`` (distinct proper prefixes of ``d`` tokens; each runs
    one token through the model)."""

    candidates: int
    nodes: tuple[int, ...]

    @property
    def n_nodes(self) -> int:
        return sum(self.nodes)


def answer_scoring_flops(shape: ModelShape, n_tokens: int, trie: AnswerTrie) -> float:
    """Scoring ``trie``'s candidates after one ``n_tokens`` prompt whose keys/values exist: each node is one token
    through every layer attending to ``n_tokens + d`` keys, plus its unembedding row (the prompt's own last row
    scores the first tokens)."""
    return sum(n * (shape.n_layers * layer_flops(shape, n_tokens + d) + unembed_flops(shape))
               for d, n in enumerate(trie.nodes, 1))


def answer_forwards(n_prompts: int, trie: AnswerTrie, node_cap: int) -> int:
    """Forwards that score ``n_prompts`` prompts' tries together: each depth's nodes, ``node_cap`` per forward."""
    return sum(math.ceil(n_prompts * n / max(1, node_cap)) for n in trie.nodes)


def kv_bytes(shape: ModelShape, n_tokens: int, dtype: str = "float32") -> int:
    """Keys and values of ``n_tokens`` positions at every layer."""
    return shape.n_layers * 2 * shape.n_kv_heads * shape.d_head * n_tokens * DTYPE_BYTES[dtype]


def add_answer_scoring(cost: CostEstimate, shape: ModelShape, lengths: Sequence[int], trie: AnswerTrie, *,
                       batch_size: int, node_cap: int, dtype: str = "float32") -> CostEstimate:
    """Add eval's answer-level scoring to ``cost``: per batch of ``batch_size`` prompts (lengths ``lengths``), one
    padded forward of the prompts with their cache, then the candidates' trie (:func:`answer_scoring_flops`,
    ``node_cap`` nodes per forward)."""
    L = shape.n_layers
    forwards = node_forwards = 0
    for i in range(0, len(lengths), batch_size):
        b = lengths[i:i + batch_size]
        w = max(b)
        cost.flops += len(b) * (prompt_flops(shape, w) + answer_scoring_flops(shape, w, trie))
        node_forwards += answer_forwards(len(b), trie, node_cap)
        forwards += 1
    forwards += node_forwards
    cost.layer_calls += forwards * L
    cost.stream_bytes += node_forwards * weight_bytes(shape, dtype)  # a few rows per forward: bound by the weights
    cost.kernel_calls += len(lengths) * trie.candidates * OPS_PER_CANDIDATE
    cost.counts |= {"answer_candidates": trie.candidates, "answer_trie_nodes": trie.n_nodes,
                    "scoring_forwards": forwards}
    w = max(lengths)
    cost.memory["answer scoring (prompt caches + trie nodes)"] = (
        batch_size * kv_bytes(shape, w, dtype) + min(node_cap, batch_size * trie.n_nodes) * kv_bytes(shape, w + len(
            trie.nodes), dtype))
    return cost


# --------------------------------------------------------------------------------------------- probe
def probe_row_bytes(shape: ModelShape, n_tokens: int, dtype: str = "float32") -> int:
    """Peak activation bytes of one prompt in IV collection's forward: eager attention scores and weights
    ``[head, pos, pos]``, the layer's hidden states and MLP activations, one logits row (``logits_to_keep=1``)."""
    b = DTYPE_BYTES[dtype]
    return (2 * shape.n_heads * n_tokens * n_tokens * b + n_tokens * (6 * shape.d_model + 3 * shape.d_mlp) * b
            + shape.d_vocab * (b + 4))


def probe_batch_size(shape: ModelShape, n_tokens: int, budget: int, dtype: str = "float32") -> int:
    """Prompts (of up to ``n_tokens`` tokens) per forward of IV collection that fit ``budget`` bytes (at most
    256: beyond that a CPU forward gets no faster)."""
    return max(1, min(256, budget // max(1, probe_row_bytes(shape, n_tokens, dtype))))


def probe_cost(shape: ModelShape, lengths: Sequence[int], n_layers_probed: int, n_probes: int, *,
               dtype: str = "float32", batch_size: int | None = None, budget: int = 1 << 30, folds: int = 5,
               n_shuffles: int = 1, n_classes: int = 4, layer_seconds: float | None = None,
               layers_per_solve: int = 1, model: str = "") -> CostEstimate:
    """IV collection of ``len(lengths)`` instruction-only prompts in left-padded batches (in row order, padded to
    the batch's longest), then per probed layer ``n_probes`` logistic probes (``folds`` CV fits, as many per
    shuffle, one held-out fit and the refit on all rows, solved as one batch per probe), LDA, PCA and similarities.

    ``layer_seconds``: the measured CPU seconds of one layer's probe fits, all probes together
    (:func:`ivlens.probing.cost.probe_layer_latency` per probe); without it each probe's batch is modelled
    as 60 L-BFGS iterations (30-90 measured on real IVs) of its fits' matrix products. ``layers_per_solve``: the
    layers whose IVs and fits the run holds at once (:func:`ivlens.probing.probes.layers_per_batch`)."""
    n = len(lengths)
    bs = batch_size or probe_batch_size(shape, max(lengths), budget, dtype)
    batches = [lengths[i:i + bs] for i in range(0, n, bs)]
    flops = sum(len(b) * prompt_flops(shape, max(b)) for b in batches)
    d = shape.d_model
    fits_per_probe = folds * (1 + n_shuffles) + 2  # CV, shuffled-label CV, held-out, refit
    fits = n_layers_probed * n_probes * fits_per_probe
    cost = CostEstimate("probe", model)
    if layer_seconds is None:
        iters = 60  # batched L-BFGS iterations, one forward and one gradient product of every fit each
        flops += fits * iters * 2 * 2 * n * d * n_classes
        cost.kernel_calls = -(-n_layers_probed // layers_per_solve) * n_probes * iters * 120  # per solve of layers
    else:
        cost.serial_seconds = n_layers_probed * layer_seconds
    flops += n_layers_probed * 3 * 4 * n * d * min(n, d)  # LDA, PCA, similarity
    cost.counts = {"instructions": n, "forward_passes": len(batches), "batch_prompts": bs,
                   "longest_prompt": max(lengths), "layers": n_layers_probed, "probe_fits": fits}
    cost.flops = flops
    cost.layer_calls = len(batches) * shape.n_layers
    cost.memory = {**_base_memory(shape, dtype), "one batch's forward": bs * probe_row_bytes(shape, max(lengths), dtype),
                   "the IVs of one solve's layers (probing)": layers_per_solve * n * d * 4 * 4}
    return cost


# --------------------------------------------------------------------------------------------- trace
#: ``L·H·T²`` fp32 tensors alive at the tracer's peak: one trace holds the forward pass's attention weights, the
#: frozen patterns, the full and the restricted graph's head edges, and one temporary; ``--compare`` keeps the
#: four traces of a sample (A, B, two rephrasings: patterns and two graphs each) until they are compared.
GRAPH_COPIES = {"single": 5, "compare": 14}


def trace_graph_bytes(shape: ModelShape, n_tokens: int, mode: str = "single") -> int:
    """Bytes of the tracer's ``L·H·T²`` tensors (fp32) at its peak; see :data:`GRAPH_COPIES`."""
    return 4 * GRAPH_COPIES[mode] * shape.n_layers * shape.n_heads * n_tokens * n_tokens


def trace_bytes(shape: ModelShape, n_tokens: int, dtype: str = "float32", beam: int = 256,
                mode: str = "single") -> int:
    """Working memory of tracing a prompt of ``n_tokens`` tokens (beyond runtime and weights): the ``L·H·T²``
    tensors, frozen MLP slopes ``[layer, pos, d_mlp]``, forward states and gradients ``[2L+1, pos, d_model]``,
    the logits ``[pos, d_vocab]``, fp32 copies of the weights when the model is not fp32, and the beam."""
    L, T = shape.n_layers, n_tokens
    alive = 4 if mode == "compare" else 1
    out = trace_graph_bytes(shape, T, mode)
    out += alive * (4 * L * T * shape.d_mlp * 2 + 4 * 2 * (2 * L + 1) * T * shape.d_model) + 4 * T * shape.d_vocab * 2
    out += 4 * beam * T * shape.d_model * 2
    if dtype != "float32":
        out += shape.n_params * 4
    return out


def trace_cost(shape: ModelShape, lengths: Sequence[int], *, dtype: str = "float32", beam: int = 256,
               mode: str = "single", budget: int | None = None, model: str = "") -> CostEstimate:
    """Tracing ``len(lengths)`` prompts one at a time: a forward with eager attention, the frozen surrogate, the
    attribution graph (one frozen forward and backward), and a beam search over paths. ``budget``: mark the estimate
    as not fitting (``fits = False``) when the longest prompt's working memory exceeds it."""
    L, d = shape.n_layers, shape.d_model
    graphs = 2 if mode == "compare" else 1
    flops = 0.0
    for T in lengths:
        flops += prompt_flops(shape, T, logit_rows=T)  # the model's own forward
        frozen = T * (projection_flops(shape) + mlp_flops(shape)) + attention_flops(shape, 1) * T * T // 2
        flops += L * (2 + graphs) * frozen  # surrogate build, frozen forward(s), backward
        flops += graphs * L * 2 * shape.n_heads * T * T * shape.d_head  # per-head edges
        flops += L * 2 * beam * (shape.n_heads + 1) * T * d * 2  # beam expansion through heads and MLPs
    T = max(lengths)
    cost = CostEstimate("trace", model)
    cost.counts = {"prompts": len(lengths), "max_tokens": T, "graph_entries": L * shape.n_heads * T * T}
    cost.flops = flops
    cost.layer_calls = len(lengths) * L * (3 + graphs)  # the forward, the surrogate, frozen passes
    cost.kernel_calls = len(lengths) * L * beam // 4
    work = trace_bytes(shape, T, dtype, beam, mode)
    graph = trace_graph_bytes(shape, T, mode)
    cost.memory = {**_base_memory(shape, dtype), "graph (L·H·T² tensors)": graph, "other tracer state": work - graph}
    if budget is not None and budget <= 0:
        cost.fits = False
        cost.notes.append(f"the weights ({weight_bytes(shape, dtype) / 1e9:.1f} GB in {dtype}) leave no memory for the "
                          "tracer on this machine; the working memory it needs is listed above")
    elif budget is not None and work > budget:
        cost.fits = False
        cost.notes.append(f"the tracer's working memory ({work / 1e9:.2f} GB) exceeds the budget "
                          f"({budget / 1e9:.2f} GB): at most {max_trace_tokens(shape, budget, dtype, beam, mode)} "
                          "tokens fit (--max-tokens)")
    return cost


def max_trace_tokens(shape: ModelShape, budget: int, dtype: str = "float32", beam: int = 256,
                     mode: str = "single") -> int:
    """The longest prompt whose tracer working memory fits ``budget`` bytes (0 if none)."""
    lo, hi = 0, 1 << 16
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if trace_bytes(shape, mid, dtype, beam, mode) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


# --------------------------------------------------------------------------------------------- eval
def eval_cost(shape: ModelShape, lengths: Sequence[int], max_new_tokens: int, *, dtype: str = "float32",
              batch_size: int = 16, model: str = "") -> CostEstimate:
    """Greedy generation of ``max_new_tokens`` for each prompt (lengths ``lengths``), ``batch_size`` at a time:
    a padded prefill (logits at every position), then one step per new token that reads every weight once."""
    L = shape.n_layers
    batches = [list(lengths[i:i + batch_size]) for i in range(0, len(lengths), batch_size)]
    flops, steps, stream = 0.0, 0, 0.0
    kv = 0
    for b in batches:
        w = max(b)
        flops += len(b) * prompt_flops(shape, w, logit_rows=w)
        for t in range(1, max_new_tokens):
            flops += len(b) * (L * layer_flops(shape, w + t) + unembed_flops(shape))
        steps += max_new_tokens
        stream += (max_new_tokens - 1) * weight_bytes(shape, dtype)  # few rows per step: bound by reading weights
        kv = max(kv, len(b) * L * 2 * shape.n_kv_heads * shape.d_head * (w + max_new_tokens) * DTYPE_BYTES[dtype])
    w = max(lengths)
    cost = CostEstimate("eval", model)
    cost.counts = {"prompts": len(lengths), "batches": len(batches), "generation_steps": steps,
                   "new_tokens_per_prompt": max_new_tokens}
    cost.flops = flops
    cost.layer_calls = steps * L
    cost.kernel_calls = steps * 40
    cost.stream_bytes = stream
    cost.memory = {**_base_memory(shape, dtype), "KV cache": kv,
                   "prefill logits": batch_size * w * shape.d_vocab * 4 * 2,
                   "prefill activations": batch_size * (2 * shape.n_heads * w * w + w * 3 * shape.d_mlp)
                   * DTYPE_BYTES[dtype]}
    return cost


# --------------------------------------------------------------------------------------------- organism build
@dataclass(frozen=True)
class TrainStage:
    """One training stage: ``steps`` optimiser steps of ``batch`` sequences of ``seq_len`` tokens; ``passes``
    forward-equivalents per sequence (3: forward + backward; DPO: 2 × 3 policy + 2 reference forwards = 8)."""

    name: str
    steps: int
    batch: int
    seq_len: int
    passes: int = 3


def train_cost(shape: ModelShape, stages: Sequence[TrainStage], *, measure_prompts: int = 0,
               measure_tokens: int = 24, step_seconds: Mapping[str, float] | None = None,
               step_wall: bool = False, model: str = "") -> CostEstimate:
    """Training stages on ``shape`` (fp32, AdamW), then ``measure_prompts`` short forwards (the card's checks).

    ``step_seconds``: the measured seconds of one optimiser step of each stage, by name
    (:func:`ivlens.estimate.calibrate.train_step_latency`): the stages' time is then ``steps × step`` instead of
    the FLOP and layer-call model, which misjudges small models' training (backward and optimiser kernels, thread
    hand-offs) by a factor of 3 either way. The steps are CPU-seconds of one thread on a CPU
    (:attr:`CostEstimate.measured_seconds`), or with ``step_wall`` wall seconds timed on the training's own
    threads (:attr:`CostEstimate.wall_seconds`)."""
    flops, calls, layer_calls, measured, measured_flops = 0.0, 0.0, 0.0, 0.0, 0.0
    counts: dict[str, int] = {}
    for st in stages:
        fwd = prompt_flops(shape, st.seq_len, logit_rows=st.seq_len)
        flops += st.steps * st.batch * st.passes * fwd
        counts[f"{st.name}_steps"] = st.steps
        counts[f"{st.name}_sequences"] = st.steps * st.batch
        if step_seconds is not None and st.name in step_seconds:
            measured += st.steps * step_seconds[st.name]
            measured_flops += st.steps * st.batch * st.passes * fwd
            calls += st.steps * TRAINER_OPS_PER_STEP
            continue
        n_param_tensors = shape.n_layers * 12 + 3
        layer_calls += st.steps * st.passes * shape.n_layers
        calls += st.steps * n_param_tensors * 6
    flops += measure_prompts * prompt_flops(shape, measure_tokens, logit_rows=measure_tokens)
    layer_calls += measure_prompts / 16 * shape.n_layers
    cost = CostEstimate("organism build", model)
    cost.counts = counts | {"measure_forwards": measure_prompts}
    cost.flops = flops
    if step_wall:
        cost.wall_seconds, cost.wall_flops = measured, measured_flops
    else:
        cost.measured_seconds, cost.measured_flops = measured, measured_flops
    cost.kernel_calls = calls
    cost.layer_calls = layer_calls
    big = max(stages, key=lambda s: s.batch * s.seq_len * (2 if s.passes > 3 else 1))
    acts = big.batch * big.seq_len * (2 if big.passes > 3 else 1) * shape.n_layers * (
        12 * shape.d_model + 4 * shape.d_mlp + 2 * shape.n_heads * big.seq_len) * 4
    cost.memory = {"runtime": RUNTIME_BYTES + (300 << 20),  # + trl, datasets
                   "weights, grads, AdamW states (+ DPO reference)": shape.n_params * 4 * 5,
                   "activations of one batch": acts + big.batch * big.seq_len * shape.d_vocab * 4 * 3}
    return cost
