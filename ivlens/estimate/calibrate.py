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
  FLOP- nor call-bound alone, so its time is measured, not modelled.
- :func:`probe_layer_latency` ``(n, d, classes) -> s``: one layer's fits of one probe, solved as one batch (CV
  folds, shuffled-label folds, held-out split, refit; L-BFGS iterations depend on the data: timed, not modelled).
- :func:`machine_load` ``() -> (cores, others)``: CPU cores and the other runnable work (1-minute load average).

On a CPU every rate is measured **on one thread, in CPU time**, and is the best of repeated samples: the work
of one core, whatever else runs. (Timing torch's own 2 threads does not survive load: a descheduled thread makes
its sibling spin at every barrier, so the same narrow layer call measured 10-150 ms in CPU time and 8-150 ms in
wall time at load 2, against 0.35 ms on one thread, every time.) :func:`ivlens.estimate.plans.seconds` then turns
CPU-seconds into wall time with the share of the cores the run gets (all its threads on an idle machine: measured
speed-ups of 2 threads over 1 here are 1.86 for the model's matrix products and 1.95 for an organism training
step). On a GPU the timings are wall time after a synchronisation, best of samples.

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

_CACHE: dict[tuple, float] = {}
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


def best_seconds(fn, budget_s: float, min_samples: int = 3, device: torch.device | None = None) -> float:
    """The fastest of repeated runs of ``fn()``, sampling for about ``budget_s`` wall seconds (at least
    ``min_samples`` runs): on a CPU the CPU seconds of one thread (see the module docstring), on a GPU wall
    seconds after a synchronisation."""
    cpu = device is None or device.type == "cpu"
    clock = time.process_time if cpu else time.perf_counter
    best, samples, w0 = float("inf"), 0, time.perf_counter()
    with torch_threads(1) if cpu else nullcontext():
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
    if key in _CACHE:
        return _CACHE[key]
    flops, seconds = 0.0, 0.0
    gen = torch.Generator().manual_seed(0)
    for m, k, n in capped:
        a = torch.randn(m, k, generator=gen).to(device=device, dtype=dt)
        b = torch.randn(k, n, generator=gen).to(device=device, dtype=dt)
        a @ b  # warm-up (allocator, kernel choice)
        seconds += best_seconds(lambda a=a, b=b: a @ b, budget_s / max(1, len(capped)), device=device)
        flops += 2.0 * m * k * n
    _CACHE[key] = flops / seconds
    return _CACHE[key]


def op_latency(device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
               budget_s: float = 0.1) -> float:
    """Seconds per small kernel call (a ``[8, 64]`` add, best of samples of 50): the fixed cost that dominates
    small models."""
    device, dt = torch.device(device), _dtype(dtype)
    key = ("op", str(device), str(dt))
    if key in _CACHE:
        return _CACHE[key]
    x = torch.ones(8, 64, device=device, dtype=dt)

    def fifty() -> None:
        y = x
        for _ in range(50):
            y = x + y

    fifty()
    _CACHE[key] = best_seconds(fifty, budget_s, device=device) / 50
    return _CACHE[key]


def copy_rate(device: str | torch.device = "cpu", n_bytes: int = 64 << 20, budget_s: float = 0.1) -> float:
    """Bytes/s read + written by a large copy (streaming memory bandwidth; one thread on a CPU)."""
    device = torch.device(device)
    key = ("copy", str(device), n_bytes)
    if key in _CACHE:
        return _CACHE[key]
    src = torch.ones(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _CACHE[key] = 2.0 * n_bytes / best_seconds(lambda: dst.copy_(src), budget_s, device=device)
    return _CACHE[key]


def layer_latency(config, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
                  rows: int = 16, n_tokens: int = 8, budget_s: float = 0.4) -> float:
    """Seconds per call of one decoder layer of ``config``'s architecture made narrow (width 64, the same
    modules and kernels), on ``rows × n_tokens`` tokens: the fixed cost of a layer call (Python, dispatch,
    small kernels, thread hand-offs) without its FLOPs, which :func:`gemm_rate` covers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    device, dt = torch.device(device), _dtype(dtype)
    key = ("layer", getattr(config, "model_type", ""), str(device), str(dt), rows, n_tokens)
    if key in _CACHE:
        return _CACHE[key]
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
        _CACHE[key] = best_seconds(call, budget_s, min_samples=8, device=device)
    return _CACHE[key]


def train_step_latency(config, batch: int, seq_len: int, device: str | torch.device = "cpu",
                       dtype: str | torch.dtype = "float32", forward_only: bool = False, steps: int = 3,
                       optimizers: Callable[[torch.nn.Module], list[torch.optim.Optimizer]] | None = None,
                       optimizer_name: str = "adamw") -> float:
    """Seconds per optimiser step (forward on ``[batch, seq_len]`` token ids, cross-entropy, backward, update) of
    the model built from ``config`` with random weights (on a CPU: CPU seconds of one thread), the best of
    ``steps`` steps after one warm-up; ``forward_only``: a no-grad forward instead (a frozen reference model's
    work). ``optimizers(model)`` builds the update's optimisers (default one AdamW; ``optimizer_name`` keys the
    cache). Builds the model at full size: meant for small models such as the organisms (the v6 organism's
    pretraining step, 88 × 24 tokens with Muon: about 0.6 CPU-seconds)."""
    from transformers import AutoModelForCausalLM

    device, dt = torch.device(device), _dtype(dtype)
    key = ("train", config.to_json_string(), batch, seq_len, str(device), str(dt), forward_only, optimizer_name)
    if key in _CACHE:
        return _CACHE[key]
    cfg = copy.deepcopy(config)
    cfg._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg).to(device=device, dtype=dt)
        ids = torch.randint(0, cfg.vocab_size, (batch, seq_len), device=device)
    opts = optimizers(model) if optimizers is not None else [torch.optim.AdamW(model.parameters(), lr=1e-4)]

    def step() -> None:
        if forward_only:
            with torch.no_grad():
                model(input_ids=ids)
        else:
            model(input_ids=ids, labels=ids).loss.backward()
            for opt in opts:
                opt.step()
                opt.zero_grad(set_to_none=True)

    with torch_threads(1) if device.type == "cpu" else nullcontext():
        step()  # warm-up: allocator, AdamW state
    _CACHE[key] = best_seconds(step, 0.0, min_samples=steps, device=device)
    return _CACHE[key]


def probe_layer_latency(n: int, d: int, n_classes: int, heldout: bool = True, folds: int = 5,
                        n_shuffles: int = 1) -> float:
    """CPU seconds of one layer's fits of one probe, as ``ivlens probe`` runs them: one
    :func:`ivlens.probing.probes.probe_layer_fitted` call (``folds`` CV fits, ``folds × n_shuffles`` shuffled-label
    fits, the held-out split when ``heldout``, the refit on all rows, solved as one batch on one thread) on ``n``
    rows of ``d`` features and ``n_classes`` balanced classes. The rows are synthetic instruction vectors shaped
    like real ones where it sets the solver's iteration count: separable class clusters in a space whose
    correlation spectrum decays as a power law (SmolLM2's IVs: 111, 12, 1.1, 0.06 at eigenvalues 1, 9, 65, 257),
    with a large common offset. About 0.38 s at 804 × 576 × 4 here, where the real fits on SmolLM2's IVs took
    0.48-0.56 s (1.4 s at its first layer; ``benchmarks/probe.py``). CPU time of this process: the fits' own work
    on their one thread, whatever the load."""
    import numpy as np

    from ivlens.probing.probes import ProbeConfig, probe_layer_fitted

    key = ("probe-layer", n, d, n_classes, heldout, folds, n_shuffles)
    if key in _CACHE:
        return _CACHE[key]
    y = np.arange(n) % n_classes
    with torch_threads(1):  # numpy's threads would spin on a loaded machine: one thread, torch's generator
        g = torch.Generator().manual_seed(0)
        m = min(d, 256)  # directions of a power-law spectrum (j+1)^-1.2 e^(-8j/d), as SmolLM2's IVs; a floor beyond
        j = torch.arange(m, dtype=torch.float64)
        spectrum = ((j + 1.0) ** -1.2 * torch.exp(-8.0 * j / d)).sqrt()  # [m] standard deviations
        basis = torch.linalg.qr(torch.randn(d, m, generator=g, dtype=torch.float64)).Q  # [d, m] orthonormal
        means = torch.randn(n_classes, m, generator=g, dtype=torch.float64)  # separable clusters (CV accuracy ~1)
        X = ((torch.randn(n, m, generator=g, dtype=torch.float64) + means[y]) * spectrum) @ basis.T  # [n, d]
        X += spectrum[-1] * torch.randn(n, d, generator=g, dtype=torch.float64)
        X += 20 * spectrum[0] * torch.randn(d, generator=g, dtype=torch.float64)  # the common offset
    X = X.numpy()
    groups = ((np.arange(n) // n_classes) % 4 == 3).astype(int) if heldout else None
    cfg = ProbeConfig(folds=folds, n_shuffles=n_shuffles)
    probe_layer_fitted(X[: 4 * n_classes, :8], y[: 4 * n_classes], cfg=ProbeConfig(folds=2))  # warm-up
    t0 = time.process_time()
    probe_layer_fitted(X, y, groups, cfg)
    _CACHE[key] = max(time.process_time() - t0, 1e-9)
    return _CACHE[key]


def machine_load() -> tuple[int, float]:
    """``(cores, others)``: CPU cores this process may use and the runnable work of other processes (the 1-minute
    load average less this process's own thread)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        others = max(0.0, os.getloadavg()[0] - 1.0)
    except OSError:
        others = 0.0
    return cores, others
