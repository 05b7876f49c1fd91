"""How fast is this device? Short micro-benchmarks, cached per process.

- :func:`gemm_rate` ``(shapes, device, dtype) -> FLOP/s``: matrix products of the model's own shapes
  (:func:`model_gemm_shapes`: ``[rows, d_model] × [d_model, d_mlp]``, the attention projections, the
  unembedding), timed for about half a second in all. This is the machine's ceiling for the work the engine
  does; ``benchmarks/patch_scale.py`` divides executed FLOPs by ``seconds × gemm_rate`` for its efficiency.
- :func:`op_latency` ``(device, dtype) -> s``: the fixed cost of one small kernel call (dispatch and launch),
  which dominates small models such as the organisms.
- :func:`copy_rate` ``(device) -> bytes/s``: streaming memory bandwidth (reading weights in generation steps
  with few rows is bound by it).

Weights larger than ``max_weight_elems`` are cut along their output dimension (a product's speed per FLOP
does not change once it is this large), so calibrating for a 7B model needs no 7B-sized matrix.

>>> rate = gemm_rate(model_gemm_shapes(shape), "cpu", "float32")   # FLOP/s
"""

from __future__ import annotations

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


def model_gemm_shapes(shape: ModelShape, rows: int = 256) -> tuple[GemmShape, ...]:
    """The model's own matrix products for ``rows`` tokens at once: q/o projection, MLP up and down, the
    unembedding."""
    q = shape.n_heads * shape.d_head
    return ((rows, shape.d_model, q), (rows, shape.d_model, shape.d_mlp), (rows, shape.d_mlp, shape.d_model),
            (rows, shape.d_model, shape.d_vocab))


def gemm_rate(shapes: Sequence[GemmShape], device: str | torch.device = "cpu",
              dtype: str | torch.dtype = "float32", budget_s: float = 0.4,
              max_weight_elems: int = 1 << 22, max_rows: int = 512) -> float:
    """FLOP/s of ``[m, k] × [k, n]`` products of ``shapes`` on ``device`` in ``dtype``: total FLOPs over total
    time, after one warm-up each; about ``budget_s`` seconds (cached per process)."""
    device, dt = torch.device(device), _dtype(dtype)
    capped = tuple((min(m, max_rows), k, max(1, min(n, max_weight_elems // k))) for m, k, n in shapes)
    key = ("gemm", capped, str(device), str(dt))
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
        reps, t0 = 0, time.perf_counter()
        while True:
            a @ b
            reps += 1
            _sync(device)
            dt_s = time.perf_counter() - t0
            if dt_s >= per_shape or reps >= 10_000:
                break
        flops += 2.0 * m * k * n * reps
        seconds += dt_s
    _CACHE[key] = flops / seconds
    return _CACHE[key]


def op_latency(device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
               budget_s: float = 0.05) -> float:
    """Seconds per small kernel call (a ``[8, 64]`` add): the fixed cost that dominates small models."""
    device, dt = torch.device(device), _dtype(dtype)
    key = ("op", str(device), str(dt))
    if key in _CACHE:
        return _CACHE[key]
    x = torch.ones(8, 64, device=device, dtype=dt)
    y = x + x
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget_s:
        for _ in range(50):
            y = x + y
        reps += 50
    _sync(device)
    _CACHE[key] = (time.perf_counter() - t0) / reps
    return _CACHE[key]


def copy_rate(device: str | torch.device = "cpu", n_bytes: int = 64 << 20, budget_s: float = 0.1) -> float:
    """Bytes/s read + written by a large copy (streaming memory bandwidth)."""
    device = torch.device(device)
    key = ("copy", str(device), n_bytes)
    if key in _CACHE:
        return _CACHE[key]
    src = torch.ones(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget_s:
        dst.copy_(src)
        reps += 1
    _sync(device)
    _CACHE[key] = 2.0 * n_bytes * reps / (time.perf_counter() - t0)
    return _CACHE[key]
