"""The organism's Muon (:class:`ivlens.organism.muon.Fp32Muon`) against ``torch.optim.Muon``: the same update
exactly where both iterate in the same dtype, and an orthogonalised update in fp32."""

from __future__ import annotations

import pytest
import torch

from ivlens.organism.muon import Fp32Muon, adjusted_lr, orthogonalise

pytestmark = pytest.mark.unit


def _steps(opt_cls, weights: list[torch.Tensor], grads: list[list[torch.Tensor]], **kw) -> list[torch.Tensor]:
    params = [w.clone().requires_grad_() for w in weights]
    opt = opt_cls(params, **kw)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("rule", ["match_rms_adamw", "original", None])
def test_bfloat16_parameters_get_torch_muons_update_bit_for_bit(rule):
    """On bfloat16 parameters torch.optim.Muon's cast is a no-op, so both run the same iteration in the same dtype:
    the updates must agree exactly (momentum, Nesterov, the learning-rate rule, weight decay, tall and wide).
    Nesterov only: without it, torch 2.13 normalises a bfloat16 momentum buffer in place (its cast returns the
    buffer itself), which the fp32 iteration does not copy."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(12, 7), (5, 9), (6, 6)]
    weights = [torch.randn(s, generator=gen).bfloat16() for s in shapes]
    grads = [[torch.randn(s, generator=gen).bfloat16() for s in shapes] for _ in range(3)]
    kw = {"lr": 1e-2, "weight_decay": 0.01, "adjust_lr_fn": rule}
    ours, theirs = _steps(Fp32Muon, weights, grads, **kw), _steps(torch.optim.Muon, weights, grads, **kw)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert not any(torch.equal(a, w) for a, w in zip(ours, weights, strict=True))  # the steps moved every matrix


def test_fp32_parameters_iterate_in_fp32_close_to_torchs_bfloat16_update():
    """On fp32 parameters the update differs from torch's only by torch's bfloat16 rounding (a relative 2⁻⁸ per
    product), and the iteration's state stays fp32."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(24, 16), (16, 24)]
    weights = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(2)]
    kw = {"lr": 1e-2, "weight_decay": 0.01, "adjust_lr_fn": "match_rms_adamw"}
    ours, theirs = _steps(Fp32Muon, weights, grads, **kw), _steps(torch.optim.Muon, weights, grads, **kw)
    for a, b, w in zip(ours, theirs, weights, strict=True):
        moved = (b - w).abs().max()
        assert a.dtype == torch.float32 and not torch.equal(a, b)
        assert (a - b).abs().max() < 0.05 * moved


def test_orthogonalise_flattens_the_spectrum_of_tall_and_wide_updates():
    """Muon's quintic iteration leaves singular values near 1 (between about 0.5 and 1.5), over two decades of
    input, and keeps the singular vectors: ``orthogonalise(U S Vᵀ) ≈ U S' Vᵀ``."""
    gen = torch.Generator().manual_seed(2)
    for shape in [(40, 12), (12, 40)]:
        u, _ = torch.linalg.qr(torch.randn(shape[0], 12, generator=gen))
        v, _ = torch.linalg.qr(torch.randn(shape[1], 12, generator=gen))
        s = torch.logspace(-1, 1, 12)  # singular values over two decades
        update = (u * s) @ v.T  # [rows, cols]
        out = orthogonalise(update, (3.4445, -4.7750, 2.0315), 5, 1e-7)
        assert out.shape == update.shape and out.dtype == torch.float32
        sv = torch.linalg.svdvals(out)
        assert sv.min() > 0.5 and sv.max() < 1.5
        assert torch.allclose(u.T @ out @ v, torch.diag(torch.diagonal(u.T @ out @ v)), atol=1e-4)


def test_adjusted_lr_follows_torchs_rules():
    assert adjusted_lr(0.1, "match_rms_adamw", torch.Size([16, 64])) == pytest.approx(0.1 * 0.2 * 8)
    assert adjusted_lr(0.1, "original", torch.Size([64, 16])) == pytest.approx(0.2)
    assert adjusted_lr(0.1, None, torch.Size([16, 64])) == pytest.approx(0.1)
