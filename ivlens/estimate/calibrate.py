"""How fast is this device? Short micro-benchmarks, cached per process.

- :func:`gemm_rate` ``(shapes, device, dtype) -> FLOP/s``: matrix products of the model's own shapes
  (:func:`model_gemm_shapes`: ``[rows, d_model] × [d_model, d_mlp]``, the attention projections, the
  unembedding), timed for about half a second in all. This is the machine's ceiling for the work the engine
  does; ``benchmarks/patch_scale.py`` divides executed FLOPs by ``seconds × gemm_rate`` for its efficiency.
- :func:`op_latency` ``(device, dtype) -> s``: the fixed cost of one small kernel call (dispatch and launch),
  which dominates small models such as the organisms.
- :func:`copy_rate` ``(device) -> bytes/s``: streaming memory bandwidth (reading weights in generation steps
  with few rows is bound by it).
- :func:`train_step_latency` ``(config, batch, seq_len) -> s``: one real AdamW step (forward, backward, update)
  of the model built from ``config`` at that batch shape. Training a small model (the organisms) is neither
  FLOP- nor call-bound alone, so its time is measured, not modelled; the organism build's estimate times it in
  wall time on the build's own threads (below).
- :func:`ivlens.probing.cost.probe_layer_latency` ``(n, d, classes) -> s`` (with the probes: it times their fits):
  one layer's fits of one probe, solved as one batch (CV folds, shuffled-label folds, held-out split, refit; L-BFGS
  iterations depend on the data: timed, not modelled).
- :func:`machine_load` ``() -> (cores, others)``: CPU cores and the other runnable work (1-minute load average).

On a CPU every rate is measured **on one thread, in CPU time**, and is the best of repeated samples: the work
of one core, whatever else runs. (Timing torch's own 2 threads does not survive load: a descheduled thread makes
its sibling spin at every barrier, so the same narrow layer call measured 10-150 ms in CPU time and 8-150 ms in
wall time at load 2, against 0.35 ms on one thread, every time.) :func:`ivlens.estimate.costs.seconds` then turns
CPU-seconds into wall time with the share of the cores the run gets (all its threads on an idle machine: measured
speed-ups of 2 threads over 1 here are 1.86 for the model's matrix products; 1.95 was noted for an organism
training step before v9). The exception is a training step timed for a run that trains on its own threads right
after (the organism build): organism v9's pretraining step (88 rows of 24 tokens) is only 1.64-1.74 times as fast
on two threads as on one (three runs of 12 alternated pairs), so it is timed in wall time on those threads
(``train_step_latency(..., threads=2)``). On a GPU the timings are wall time after a synchronisation, best of samples.

Weights larger than ``max_weight_elems`` are cut along their output dimension (a product's speed per FLOP
does not change once it is this large), so calibrating for a 7B model needs no 7B-sized matrix.

>>> rate = gemm_rate(model_gemm_shapes(shape), "cpu", "float32")   # FLOP/s
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch

from ivlens.scoped import torch_threads

from .flops import ModelShape

GemmShape = tuple[int, int, int]  # (m, k, n): [m, k] × [k, n]

#: rates measured in this process, by what was measured (each is measured once)
MEASURED: dict[tuple, float] = {}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    return _DTYPES[dtype] if isinstance(dtype, str) else dtype


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_gemm_shapes(shape: ModelShape, rows: int | None = None) -> tuple[GemmShape, ...]:
    """The model's own matrix products for ``rows`` tokens at once (default: 256, or 1024 for models of width up
    to 512, whose batched calls hold more tokens): q/o projection, MLP up and down, the unembedding."""
    rows = rows or (1024 if shape.d_model <= 512 else 256)
    q = shape.n_heads * shape.d_head
    return ((rows, shape.d_model, q), (rows, shape.d_model, shape.d_mlp), (rows, shape.d_mlp, shape.d_model),
            (rows, shape.d_model, shape.d_vocab))


def best_seconds(fn, budget_s: float, min_samples: int = 3, device: torch.device | None = None,
                 threads: int | None = None) -> float:
    """The fastest of repeated runs of ``fn()``, sampling for about ``budget_s`` wall seconds (at least
    ``min_samples`` runs): on a CPU the CPU seconds of one thread (see the module docstring), or with ``threads``
    the wall seconds on that many torch threads, as the machine is loaded now; on a GPU wall seconds after a
    synchronisation."""
    cpu = device is None or device.type == "cpu"
    clock = time.process_time if cpu and threads is None else time.perf_counter
    best, samples, w0 = float("inf"), 0, time.perf_counter()
    with torch_threads(threads or 1) if cpu else nullcontext():
        while samples < min_samples or time.perf_counter() - w0 < budget_s:
            t0 = clock()
            fn()
            if not cpu:
                _sync(device)
            best = min(best, clock() - t0)
            samples += 1
    return max(best, 1e-9)


def gemm_rate(shapes: Sequence[GemmShape], device: str | torch.device = "cpu",
              dtype: str | torch.dtype = "float32", budget_s: float = 0.4,
              max_weight_elems: int = 1 << 22, max_rows: int = 1024) -> float:
    """FLOP/s of ``[m, k] × [k, n]`` products of ``shapes`` on ``device`` in ``dtype`` (on a CPU: per CPU-second
    of one thread): total FLOPs over the sum of each shape's best time, after one warm-up each; about
    ``budget_s`` seconds (cached per process)."""
    device, dt = torch.device(device), _dtype(dtype)
    capped = tuple((min(m, max_rows), k, max(1, min(n, max_weight_elems // k))) for m, k, n in shapes)
    key = ("gemm", capped, str(device), str(dt))
    if key in MEASURED:
        return MEASURED[key]
    flops, seconds = 0.0, 0.0
    gen = torch.Generator().manual_seed(0)
    for m, k, n in capped:
        a = torch.randn(m, k, generator=gen).to(device=device, dtype=dt)
        b = torch.randn(k, n, generator=gen).to(device=device, dtype=dt)
        a @ b  # warm-up (allocator, kernel choice)
        seconds += best_seconds(lambda a=a, b=b: a @ b, budget_s / max(1, len(capped)), device=device)
        flops += 2.0 * m * k * n
    MEASURED[key] = flops / seconds
    return MEASURED[key]


def op_latency(device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
               budget_s: float = 0.1) -> float:
    """Seconds per small kernel call (a ``[8, 64]`` add, best of samples of 50): the fixed cost that dominates
    small models."""
    device, dt = torch.device(device), _dtype(dtype)
    key = ("op", str(device), str(dt))
    if key in MEASURED:
        return MEASURED[key]
    x = torch.ones(8, 64, device=device, dtype=dt)

    def fifty() -> None:
        y = x
        for _ in range(50):
            y = x + y

    fifty()
    MEASURED[key] = best_seconds(fifty, budget_s, device=device) / 50
    return MEASURED[key]


def copy_rate(device: str | torch.device = "cpu", n_bytes: int = 64 << 20, budget_s: float = 0.1) -> float:
    """Bytes/s read + written by a large copy (streaming memory bandwidth; one thread on a CPU)."""
    device = torch.device(device)
    key = ("copy", str(device), n_bytes)
    if key in MEASURED:
        return MEASURED[key]
    src = torch.ones(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    MEASURED[key] = 2.0 * n_bytes / best_seconds(lambda: dst.copy_(src), budget_s, device=device)
    return MEASURED[key]


def layer_latency(config, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
                  rows: int = 16, n_tokens: int = 8, budget_s: float = 0.4) -> float:
    """Seconds per call of one decoder layer of ``config``'s architecture made narrow (width 64, the same
    modules and kernels), on ``rows × n_tokens`` tokens: the fixed cost of a layer call (Python, dispatch,
    small kernels, thread hand-offs) without its FLOPs, which :func:`gemm_rate` covers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    device, dt = torch.device(device), _dtype(dtype)
    key = ("layer", getattr(config, "model_type", ""), str(device), str(dt), rows, n_tokens)
    if key in MEASURED:
        return MEASURED[key]
    small = {"hidden_size": 64, "n_embd": 64, "intermediate_size": 128, "n_inner": 128, "num_hidden_layers": 1,
             "n_layer": 1, "num_attention_heads": 4, "n_head": 4, "num_key_value_heads": 2, "head_dim": 16,
             "vocab_size": 128, "layer_types": None}
    cfg = AutoConfig.for_model(config.model_type, **{k: v for k, v in small.items() if hasattr(config, k)})
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg).to(device=device, dtype=dt).eval()
    from ivlens.models.adapters import get_adapter

    ad = get_adapter(model)
    ids = torch.ones(rows, n_tokens, dtype=torch.long, device=device)
    pos = torch.arange(n_tokens, device=device).expand(rows, -1)
    mask = torch.ones(rows, n_tokens, dtype=torch.long, device=device)
    with torch.no_grad():
        h = ad.embed_input(ids, pos)
        m = ad.layer_mask(0, mask, n_tokens, h.dtype)
        pe = ad.position_embeddings(h, pos, 0)

        def call():
            return ad.run_layer(0, h, attention_mask=m, position_ids=pos, position_embeddings=pe)

        call()
        MEASURED[key] = best_seconds(call, budget_s, min_samples=8, device=device)
    return MEASURED[key]


def train_step_latency(config, batch: int, seq_len: int, device: str | torch.device = "cpu",
                       dtype: str | torch.dtype = "float32", steps: int = 3,
                       optimizers: Callable[[torch.nn.Module], list[torch.optim.Optimizer]] | None = None,
                       optimizer_name: str = "adamw", threads: int | None = None) -> float:
    """Seconds per optimiser step (forward on ``[batch, seq_len]`` token ids, cross-entropy, backward, update) of
    the model built from ``config`` with random weights, the best of ``steps`` steps after one warm-up: on a CPU
    the CPU seconds of one thread, or with ``threads`` the wall seconds on that many torch threads as the machine
    is loaded now (what a run training on those threads right after takes per step; organism v9's pretraining
    step is only 1.64-1.74 times as fast on two threads as on one, measured alternately here, so one thread's
    time halved was 15-20 % short). ``optimizers(model)`` builds the update's optimisers (default one AdamW;
    ``optimizer_name`` keys the cache). Builds the model at full size: meant for small models such as the
    organisms (organism v9's pretraining step, 88 × 24 tokens with Muon: 0.6-0.8 CPU-seconds, 0.35-0.45 s on two
    threads here)."""
    from transformers import AutoModelForCausalLM

    device, dt = torch.device(device), _dtype(dtype)
    key = ("train", config.to_json_string(), batch, seq_len, str(device), str(dt), optimizer_name, threads)
    if key in MEASURED:
        return MEASURED[key]
    cfg = copy.deepcopy(config)
    cfg._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg).to(device=device, dtype=dt)
        ids = torch.randint(0, cfg.vocab_size, (batch, seq_len), device=device)
    opts = optimizers(model) if optimizers is not None else [torch.optim.AdamW(model.parameters(), lr=1e-4)]

    def step() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)

    with torch_threads(threads or 1) if device.type == "cpu" else nullcontext():
        step()  # warm-up: allocator, AdamW state
    MEASURED[key] = best_seconds(step, 0.0, min_samples=steps, device=device, threads=threads)
    return MEASURED[key]


def machine_load() -> tuple[int, float]:
    """``(cores, others)``: CPU cores this process may use and the runnable work of other processes (the 1-minute
    load average less this process's own thread)."""
    import os

    from ivlens.budget import usable_cores

    cores = usable_cores()
    try:
        others = max(0.0, os.getloadavg()[0] - 1.0)
    except OSError:
        others = 0.0
    return cores, others
