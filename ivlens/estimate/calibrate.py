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
- :func:`probe_fit_latency` ``(n, d, classes) -> s``: one logistic-probe fit (L-BFGS iterations depend on the
  data: timed, not modelled).
- :func:`machine_load` ``() -> (cores, others)``: CPU cores and the other runnable work (1-minute load average).

With ``cpu_time=True`` the three rates are per **CPU-second** of this process (``time.process_time``: all its
threads) rather than per wall second: a short benchmark on a shared machine is lucky or unlucky with the
scheduler, its CPU time is not. :func:`ivlens.estimate.plans.seconds` then turns CPU seconds into wall time with
the share of the cores this process will get (:func:`machine_load`).

Weights larger than ``max_weight_elems`` are cut along their output dimension (a product's speed per FLOP
does not change once it is this large), so calibrating for a 7B model needs no 7B-sized matrix.

>>> rate = gemm_rate(model_gemm_shapes(shape), "cpu", "float32")   # FLOP/s
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch

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


def _clock(device: torch.device, cpu_time: bool):
    return time.process_time if cpu_time and device.type == "cpu" else time.perf_counter


def gemm_rate(shapes: Sequence[GemmShape], device: str | torch.device = "cpu",
              dtype: str | torch.dtype = "float32", budget_s: float = 0.4,
              max_weight_elems: int = 1 << 22, max_rows: int = 1024, cpu_time: bool = False) -> float:
    """FLOP/s of ``[m, k] × [k, n]`` products of ``shapes`` on ``device`` in ``dtype``: total FLOPs over total
    time, after one warm-up each; about ``budget_s`` seconds (cached per process). ``cpu_time``: FLOPs per
    CPU-second of this process (all threads) instead of per wall second (CPU only)."""
    device, dt = torch.device(device), _dtype(dtype)
    capped = tuple((min(m, max_rows), k, max(1, min(n, max_weight_elems // k))) for m, k, n in shapes)
    key = ("gemm", capped, str(device), str(dt), cpu_time)
    clock = _clock(device, cpu_time)
    if key in _CACHE:
        return _CACHE[key]
    flops, seconds = 0.0, 0.0
    per_shape = budget_s / max(1, len(capped))
    gen = torch.Generator().manual_seed(0)
    for m, k, n in capped:
        a = torch.randn(m, k, generator=gen).to(device=device, dtype=dt)
        b = torch.randn(k, n, generator=gen).to(device=device, dtype=dt)
        a @ b  # warm-up (allocator, kernel choice)
        _sync(device)
        reps, t0, w0 = 0, clock(), time.perf_counter()
        while True:
            a @ b
            reps += 1
            _sync(device)
            if time.perf_counter() - w0 >= per_shape or reps >= 10_000:
                break
        dt_s = max(clock() - t0, 1e-9)
        flops += 2.0 * m * k * n * reps
        seconds += dt_s
    _CACHE[key] = flops / seconds
    return _CACHE[key]


def op_latency(device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
               budget_s: float = 0.1, cpu_time: bool = False) -> float:
    """Seconds per small kernel call (a ``[8, 64]`` add): the fixed cost that dominates small models
    (``cpu_time``: CPU-seconds of this process)."""
    device, dt = torch.device(device), _dtype(dtype)
    key = ("op", str(device), str(dt), cpu_time)
    if key in _CACHE:
        return _CACHE[key]
    clock = _clock(device, cpu_time)
    x = torch.ones(8, 64, device=device, dtype=dt)
    y = x + x
    _sync(device)
    reps, t0, w0 = 0, clock(), time.perf_counter()
    while time.perf_counter() - w0 < budget_s:
        for _ in range(50):
            y = x + y
        reps += 50
    _sync(device)
    _CACHE[key] = max(clock() - t0, 1e-9) / reps
    return _CACHE[key]


def copy_rate(device: str | torch.device = "cpu", n_bytes: int = 64 << 20, budget_s: float = 0.1,
              cpu_time: bool = False) -> float:
    """Bytes/s read + written by a large copy (streaming memory bandwidth; ``cpu_time``: per CPU-second)."""
    device = torch.device(device)
    key = ("copy", str(device), n_bytes, cpu_time)
    if key in _CACHE:
        return _CACHE[key]
    clock = _clock(device, cpu_time)
    src = torch.ones(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    reps, t0, w0 = 0, clock(), time.perf_counter()
    while time.perf_counter() - w0 < budget_s:
        dst.copy_(src)
        reps += 1
    _sync(device)
    _CACHE[key] = 2.0 * n_bytes * reps / max(clock() - t0, 1e-9)
    return _CACHE[key]


def layer_latency(config, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
                  rows: int = 16, n_tokens: int = 8, budget_s: float = 0.4, cpu_time: bool = False) -> float:
    """Seconds per call of one decoder layer of ``config``'s architecture made narrow (width 64, the same
    modules and kernels), on ``rows × n_tokens`` tokens: the fixed cost of a layer call (Python, dispatch,
    small kernels, thread hand-offs) without its FLOPs, which :func:`gemm_rate` covers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    device, dt = torch.device(device), _dtype(dtype)
    key = ("layer", getattr(config, "model_type", ""), str(device), str(dt), rows, n_tokens, cpu_time)
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
        _sync(device)
        clock = _clock(device, cpu_time)
        reps, t0, w0 = 0, clock(), time.perf_counter()
        while time.perf_counter() - w0 < budget_s or reps < 8:
            call()
            reps += 1
        _sync(device)
    _CACHE[key] = max(clock() - t0, 1e-9) / reps
    return _CACHE[key]


def train_step_latency(config, batch: int, seq_len: int, device: str | torch.device = "cpu",
                       dtype: str | torch.dtype = "float32", forward_only: bool = False, steps: int = 3,
                       cpu_time: bool = False) -> float:
    """Seconds per optimiser step (forward on ``[batch, seq_len]`` token ids, cross-entropy, backward, AdamW
    update) of the model built from ``config`` with random weights, the median of ``steps`` steps after one
    warm-up; ``forward_only``: a no-grad forward instead (a frozen reference model's work). ``cpu_time``:
    CPU-seconds of this process (all threads) per step. Builds the model at full size: meant for small models
    such as the organisms (a 4.7 M-parameter organism step takes about 0.3 s on 2 cores)."""
    from transformers import AutoModelForCausalLM

    device, dt = torch.device(device), _dtype(dtype)
    key = ("train", config.to_json_string(), batch, seq_len, str(device), str(dt), forward_only, cpu_time)
    if key in _CACHE:
        return _CACHE[key]
    cfg = copy.deepcopy(config)
    cfg._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg).to(device=device, dtype=dt)
        ids = torch.randint(0, cfg.vocab_size, (batch, seq_len), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    clock = _clock(device, cpu_time)

    def step() -> None:
        if forward_only:
            with torch.no_grad():
                model(input_ids=ids)
        else:
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        _sync(device)

    step()  # warm-up: allocator, AdamW state
    times = []
    for _ in range(steps):
        t0 = clock()
        step()
        times.append(clock() - t0)
    _CACHE[key] = max(sorted(times)[len(times) // 2], 1e-9)
    return _CACHE[key]


def probe_fit_latency(n: int, d: int, n_classes: int, shuffled: bool = False, cpu_time: bool = False) -> float:
    """Seconds of one :class:`ivlens.probing.probes.LogisticProbe` fit (one thread, as the probes run) on ``n``
    rows of ``d`` features and ``n_classes`` balanced classes: separable clusters (IVs of different subtasks,
    about 50 ms at 640 × 256 × 4 here) or, with ``shuffled``, labels with no signal (the shuffled-label
    control, whose L-BFGS runs longer: about 110 ms). The iteration count depends on the data, so the fit is
    timed, not modelled."""
    import numpy as np

    from ivlens.probing.probes import LogisticProbe

    key = ("probe", n, d, n_classes, shuffled, cpu_time)
    if key in _CACHE:
        return _CACHE[key]
    g = np.random.default_rng(0)
    y = np.arange(n) % n_classes
    X = g.standard_normal((n, d))
    if not shuffled:  # one cluster per class, well apart (probes on IVs reach CV accuracy ~1)
        X += 4 * g.standard_normal((n_classes, d))[y] / np.sqrt(d)
    LogisticProbe().fit(X[:8], y[:8])  # warm-up (autograd, L-BFGS)
    clock = _clock(torch.device("cpu"), cpu_time)
    t0 = clock()
    LogisticProbe().fit(X, y)
    _CACHE[key] = max(clock() - t0, 1e-9)
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
