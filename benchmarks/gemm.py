"""This machine's reference GEMM rate, which the benchmarks normalise their times by (``seconds × rate / 56``: the
time on the 56 GFLOP/s reference machine of the budgets, ``benchmarks/budget.py``).

Imported by the benchmark scripts, which run as ``python benchmarks/<name>.py`` (this folder is then on the path).
"""

from __future__ import annotations

import time


def gemm_gflops(threads: int = 2, repeats: int = 5) -> float:
    """fp32 GEMM rate of this machine in GFLOP/s: best of ``repeats`` of a 2048×2048 @ 2048×8192 product on
    ``threads`` (after one warm-up product; torch's thread count is restored)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(2048, 2048), torch.randn(2048, 8192)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return 2 * 2048 * 2048 * 8192 / best / 1e9
