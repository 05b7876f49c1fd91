"""Batched L-BFGS: many independent smooth convex problems solved side by side along a leading problem axis.

The probes of one layer (the CV folds, the shuffled-label controls, the held-out fits, the refit on all rows),
and those of several layers side by side (:mod:`ivlens.probing.logistic`), are independent problems of the same
shape. Solving them one by one pays Python, autograd and small-kernel
overhead for every iteration of every problem; solving them as one batch pays it once per iteration, and the
matrix products of all problems become one larger product. Each problem keeps its *own* optimiser state (its
iterate, its curvature pairs, its step size), so the batch computes exactly what separate runs would; the batch
only shares the loop.

Per problem ``p`` with iterate ``x_p: [D]``, one iteration:

1. direction ``d_p = −H_p g_p`` by the L-BFGS two-loop recursion over its last ``history`` pairs
   ``(s, y)`` (initial scaling ``γ = sᵀy / yᵀy`` of its newest pair; a pair with ``sᵀy ≤ 1e-10 |s| |y|`` is skipped:
   ``torch.optim.LBFGS`` 's absolute ``sᵀy ≤ 1e-10`` skips every pair near the optimum and stalls there);
2. backtracking line search (halving) from ``t = 1`` until the Armijo condition
   ``f(x + t d) ≤ f(x) + 1e-4 · t · gᵀd`` holds. Where ``f`` no longer changes beyond float64 rounding
   (``|Δf| ≤ 1e-12 |f|``) the unit step is accepted by its slope instead, ``g(x + d)ᵀd ≤ 0.8 |gᵀd|`` (Hager and
   Zhang's approximate Wolfe condition), so the gradient keeps converging where ``f`` comparisons cannot tell.
   (For a convex objective the skipped-pair rule keeps ``H_p`` positive definite; a strong-Wolfe search would
   cost extra gradient evaluations and changes nothing at the optimum.)
3. the problem stops when its own optimality measure ``kkt_p`` (the objective returns it, e.g. the largest
   gradient entry in the problem's natural coordinates) is at most ``tol_grad``, when ``|Δf| < tol_change`` or
   the step's largest entry is below ``tol_change`` (no more progress in float64), or after ``max_iter``
   iterations. These are ``torch.optim.LBFGS`` 's rules and tolerances.

Stopped problems leave the batch (the state is compacted), so later iterations cost only what is still running.

>>> res = batched_lbfgs(objective, torch.zeros(P, D, dtype=torch.float64))
>>> res.x   # [P, D]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: ``objective(x [p, D], problems [p] long, with_grad) -> (f [p], g [p, D] | None, kkt [p] | None)``: the value of
#: the listed problems at ``x`` (rows in the order of ``problems``, always ascending), and with ``with_grad`` the
#: gradient and the optimality measure that ``tol_grad`` applies to.
Objective = Callable[[torch.Tensor, torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]

ARMIJO = 1e-4  # sufficient-decrease constant of the line search
ROUNDING = 1e-12  # a change of f below this share of |f| is float64 noise (of a sum over many rows)
MAX_BACKTRACKS = 40  # halvings of the step before a problem is declared stalled (t = 2⁻⁴⁰)


@dataclass(frozen=True)
class LBFGSResult:
    """Solutions of a batch: ``x: [P, D]``, ``f: [P]``, ``kkt: [P]`` (the optimality measure at ``x``),
    ``iterations: [P]``, ``converged: [P]`` (``kkt ≤ tol_grad``), and ``evaluations``: batched objective calls
    (each over the problems still running)."""

    x: torch.Tensor
    f: torch.Tensor
    kkt: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    evaluations: int


def _direction(g: torch.Tensor, S: torch.Tensor, Y: torch.Tensor, rho: torch.Tensor, gamma: torch.Tensor,
               order: list[int]) -> torch.Tensor:
    """``−H g`` by the two-loop recursion. ``g: [p, D]``; ``S, Y: [p, m, D]`` pairs; ``rho: [p, m]`` (0 = an
    empty or skipped slot, which then has no effect); ``order``: the used slots, oldest first."""
    q = -g
    alpha = {}
    for j in reversed(order):
        alpha[j] = rho[:, j] * (S[:, j] * q).sum(1)  # [p]
        q = q - alpha[j][:, None] * Y[:, j]
    r = q * gamma[:, None]
    for j in order:
        beta = rho[:, j] * (Y[:, j] * r).sum(1)
        r = r + S[:, j] * (alpha[j] - beta)[:, None]
    return r


def batched_lbfgs(objective: Objective, x0: torch.Tensor, *, max_iter: int = 200, history: int = 20,
                  tol_grad: float = 1e-6, tol_change: float = 1e-10) -> LBFGSResult:
    """Minimise ``P`` independent problems from ``x0: [P, D]`` (see the module docstring for the rules).

    Returns:
        :class:`LBFGSResult` (``x`` a new tensor; ``x0`` is not modified).
    """
    P, D = x0.shape
    out_x, out_f = x0.clone(), torch.zeros(P, dtype=x0.dtype)
    out_kkt, out_it = torch.zeros(P, dtype=x0.dtype), torch.zeros(P, dtype=torch.long)
    ids = torch.arange(P)
    x = x0.clone()
    f, g, kkt = objective(x, ids, True)
    evaluations = 1
    S = x.new_zeros(P, history, D)  # curvature pairs, a ring buffer shared by position (one push per iteration)
    Y = x.new_zeros(P, history, D)
    rho = x.new_zeros(P, history)
    gamma = x.new_ones(P)
    it = 0
    running = kkt > tol_grad  # [P] problems that continue
    while True:
        if not bool(running.all()):  # write out the stopped problems, keep the others
            done = ~running
            out_x[ids[done]], out_f[ids[done]], out_kkt[ids[done]] = x[done], f[done], kkt[done]
            out_it[ids[done]] = it
            ids, x, f, g, kkt = ids[running], x[running], f[running], g[running], kkt[running]
            S, Y, rho, gamma = S[running], Y[running], rho[running], gamma[running]
        if len(ids) == 0 or it >= max_iter:
            break
        order = [(it - k) % history for k in range(min(it, history), 0, -1)]  # used slots, oldest first
        d = _direction(g, S, Y, rho, gamma, order)  # [p, D]
        gd = (g * d).sum(1)  # [p]
        uphill = gd >= 0  # rounding made H indefinite: restart that problem from steepest descent
        if bool(uphill.any()):
            rho[uphill] = 0
            gamma[uphill] = 1
            d[uphill] = -g[uphill]
            gd[uphill] = -(g[uphill] * g[uphill]).sum(1)
        t = x.new_ones(len(ids))
        f_new, g_new, kkt_new = objective(x + d, ids, True)  # the unit step is accepted almost always
        evaluations += 1
        # near the optimum f's changes drown in rounding: there accept the unit step by its slope instead
        # (Hager & Zhang's approximate Wolfe condition: φ'(1) ≤ (1 − 2δ)|φ'(0)|, δ = 0.1, exact for quadratics)
        flat = (f_new <= f + ROUNDING * f.abs()) & ((g_new * d).sum(1) <= -0.8 * gd)
        failing = (f_new > f + ARMIJO * t * gd) & ~flat
        backtracked = failing.clone()
        for _ in range(MAX_BACKTRACKS):
            if not bool(failing.any()):
                break
            t[failing] *= 0.5
            f_new[failing] = objective(x[failing] + t[failing, None] * d[failing], ids[failing], False)[0]
            evaluations += 1
            failing = failing & (f_new > f + ARMIJO * t * gd)
        step = t[:, None] * d  # [p, D]
        x_new = x + step
        if bool(backtracked.any()):  # the gradient where the shortened steps ended
            f_b, g_b, kkt_b = objective(x_new[backtracked], ids[backtracked], True)
            evaluations += 1
            f_new[backtracked], g_new[backtracked], kkt_new[backtracked] = f_b, g_b, kkt_b
        y = g_new - g
        sy = (step * y).sum(1)  # [p]
        slot = it % history
        keep = sy > 1e-10 * step.norm(dim=1) * y.norm(dim=1)  # curvature along the step (scale-free test)
        S[:, slot], Y[:, slot] = step, y
        rho[:, slot] = torch.where(keep, 1.0 / sy.clamp_min(1e-300), torch.zeros_like(sy))
        gamma = torch.where(keep, sy / (y * y).sum(1).clamp_min(1e-300), gamma)
        it += 1
        stalled = failing | ((f_new - f).abs() < tol_change) | (step.abs().amax(1) <= tol_change)
        x, f, g, kkt = x_new, f_new, g_new, kkt_new
        running = (kkt > tol_grad) & ~stalled
    if len(ids):  # the iteration limit
        out_x[ids], out_f[ids], out_kkt[ids], out_it[ids] = x, f, kkt, it
    return LBFGSResult(out_x, out_f, out_kkt, out_it, out_kkt <= tol_grad, evaluations)
