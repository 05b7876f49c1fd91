"""Muon with its Newton–Schulz iteration in fp32: :class:`Fp32Muon`.

``torch.optim.Muon`` orthogonalises each update in bfloat16 (``grad.bfloat16()``), the right choice on a GPU. On a
CPU a bfloat16 matrix product is fast only where the CPU has bfloat16 instructions (AMX, AVX512-BF16); elsewhere
PyTorch falls back to a slow path. For the organism's 42 block matrices (one pretraining step, 2 threads), the
iteration took on one machine, with oneDNN held to each instruction set (``ONEDNN_MAX_CPU_ISA``):

=====================  ==========  ========
instruction set        bfloat16    fp32
=====================  ==========  ========
AMX / AVX512-BF16      57–132 ms   64–96 ms
AVX512 without BF16    300 ms      85 ms
AVX2                   2,873 ms    84 ms
=====================  ==========  ========

On an AVX2 machine the bfloat16 iteration alone would cost 200 × 2.9 s ≈ 10 minutes of the build. In fp32 it costs
the same everywhere, and rounds less.
"""

from __future__ import annotations

import math

import torch


def orthogonalise(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                  eps: float) -> torch.Tensor:
    """Muon's quintic Newton–Schulz iteration (the coefficients and step count of ``torch.optim.Muon``) on one
    ``[rows, cols]`` update, in the update's own dtype: ``≈ U S' Vᵀ`` with ``S'`` near 1, for ``update = U S Vᵀ``.
    Returns ``[rows, cols]``."""
    a, b, c = coefficients
    tall = update.size(0) > update.size(1)
    x = update.T if tall else update  # [short, long]: the Gram matrix is the small one
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T  # [short, short]
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def adjusted_lr(lr: float, rule: str | None, shape: torch.Size) -> float:
    """The learning rate of a ``[rows, cols]`` matrix under ``torch.optim.Muon``'s ``adjust_lr_fn``: ``original``
    (or ``None``) ``lr · sqrt(max(1, rows / cols))``; ``match_rms_adamw`` ``lr · 0.2 · sqrt(max(rows, cols))``, the
    rate at which the update's RMS matches AdamW's."""
    rows, cols = shape[:2]
    if rule is None or rule == "original":
        return lr * math.sqrt(max(1, rows / cols))
    if rule == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


class Fp32Muon(torch.optim.Muon):
    """``torch.optim.Muon`` (same options, state and update) with the Newton–Schulz iteration in the gradient's dtype
    (fp32 for the organism) instead of bfloat16; see the module docstring for why."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                state = self.state[param]
                if "momentum_buffer" not in state:  # torch.optim.Muon's state, under its name
                    state["momentum_buffer"] = torch.zeros_like(grad)
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalise(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update, alpha=-adjusted_lr(lr, group["adjust_lr_fn"], param.shape))
        return loss
