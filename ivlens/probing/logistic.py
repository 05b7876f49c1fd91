"""Many multinomial logistic-regression probes on the rows of one activation matrix, fitted as one batch.

Problem ``p`` trains on the rows ``train[p]`` of ``X: [n, d]`` with labels ``labels[p]`` (a CV fold, a
shuffled-label control, a held-out split, or all rows) and minimises

    f_p(W, b) = mean_{i ∈ train[p]} CE(W x̃_i + b, y_i) + ||W||² / (2 C n_p),   x̃ = (x − μ_p) / σ_p

with ``μ_p, σ_p`` the mean and standard deviation of the problem's own training rows and ``W: [k, d]`` in those
standardised units (sklearn's L2 objective divided by ``n_p``). The softmax runs over the classes present in
the problem's training rows. ``f_p`` is strictly convex in ``W`` (a unique minimiser) and convex in ``b``
(unique up to a constant added to every class, which changes no prediction; started at 0, the solver keeps
``Σ_c b_c = 0``).

**Exact reformulations used for speed; none changes the objective or its minimiser:**

- *One matrix product for all problems.* ``W x̃ + b = (W/σ_p) x + (b − (W/σ_p) μ_p)``: every problem's logits
  come from the same centred ``X`` times its own ``[d, k]`` block, so the batch's logits are one GEMM
  ``[n, d] @ [d, P·k]`` (rows outside ``train[p]`` get weight 0). Fitting the problems one by one made ``P``
  thin products and paid Python and autograd overhead ``P`` times per iteration.
- *Preconditioning by a change of variables.* ``W = V M`` for a fixed symmetric positive-definite ``M`` shared by
  the batch, and L-BFGS runs on ``V`` (:mod:`ivlens.probing.lbfgs`). Any invertible ``M`` leaves the minimiser
  unchanged (``V* = W* M⁻¹``); only the path to it differs. ``M`` is ``(Λ/k + λ)^(-1/2)`` on the top
  :data:`PRECONDITIONER_RANK` eigendirections of the correlation matrix ``Σ = x̃ᵀx̃ / n`` of all rows (eigenvalues
  ``Λ``) and the constant ``(Λ_r/k + λ)^(-1/2)`` on the rest: the inverse square root of the objective's Hessian at
  ``W = 0`` (``Σ ⊗ (I/k − 11ᵀ/k²) + λ``) with the tail of the spectrum flattened. Residual streams have a few
  directions of very large variance, which make the plain problem's condition number ``10⁴–10⁶``: there the
  shuffled-label controls ran L-BFGS to its 200-iteration limit (``|∇f| ≈ 4e-5``, not converged). Preconditioning
  the top directions only (not all of ``Σ``) matters: at a real-label optimum most rows are classified with
  confidence, their curvature vanishes and the full inverse would over-correct; rank 64 converged both kinds in
  ~50–90 iterations on SmolLM2's IVs (ranks 16–256 were tried). The top directions come from a randomised range
  finder (fixed seed, two power iterations): an approximate ``M`` is still an exact reformulation.
- *Analytic gradients* (no autograd): ``∂f/∂(W/σ) = Rᵀ(X − μ)`` with ``R = (softmax − onehot) / n_p`` on the
  training rows.

All arithmetic is float64, on one thread (the products are small; more threads contend on a shared CPU).

>>> batch = LogisticBatch.build(X, train, labels, n_classes=4, C=1.0)   # X [n, d]; train, labels [P, n]
>>> fit = batch.solve(max_iter=200)
>>> fit.coef.shape, fit.intercept.shape          # [P, k, d], [P, k]: on raw features
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ivlens.scoped import torch_threads

from .lbfgs import LBFGSResult, batched_lbfgs

#: eigendirections of the feature correlation matrix that the preconditioner rescales one by one
PRECONDITIONER_RANK = 64
#: a feature whose standard deviation on a problem's training rows is below this share of its root-mean-square
#: over all rows is constant there (rounding only) and is left unscaled, as a zero standard deviation is
CONSTANT_FEATURE = 1e-12


@dataclass(frozen=True)
class BatchFit:
    """The fitted problems of a :class:`LogisticBatch`.

    ``coef: [P, k, d]`` and ``intercept: [P, k]`` act on raw features (standardisation folded in);
    ``mean, scale: [P, d]`` the standardisation of each problem's training rows; ``present: [P, k]`` the classes
    of each problem's training rows (the others are never predicted); ``solver``: the L-BFGS run."""

    coef: np.ndarray
    intercept: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    present: np.ndarray
    solver: LBFGSResult

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Logits of every problem on the rows of ``X: [n, d]``: ``[P, n, k]`` (``−inf`` for absent classes)."""
        logits = np.einsum("nd,pkd->pnk", np.asarray(X, dtype=np.float64), self.coef) + self.intercept[:, None, :]
        return np.where(self.present[:, None, :], logits, -np.inf)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class indices ``[P, n]`` in ``0..k−1``."""
        return self.decision_function(X).argmax(-1)


@dataclass
class LogisticBatch:
    """``P`` logistic-regression problems on the rows of one matrix (see the module docstring).

    Tensors (float64): ``X: [n, d]`` centred on ``center: [d]``, the mean of all rows; ``train: [P, n]`` 0/1 row
    weights; ``n_train: [P]``; ``onehot: [P, n, k]`` labels (zero outside ``train``); ``absent: [P, k]`` bool or
    ``None`` (every class present everywhere); ``mean, scale: [P, d]`` standardisation of each problem's training
    rows (of the centred ``X``); ``lam: [P]`` ``= 1 / (C n_p)``; the preconditioner
    ``M = Q diag(a) Qᵀ + c (I − QQᵀ)`` as ``Q: [d, r]``, ``a: [r]``, ``c``."""

    X: torch.Tensor
    center: torch.Tensor
    train: torch.Tensor
    n_train: torch.Tensor
    onehot: torch.Tensor
    absent: torch.Tensor | None
    mean: torch.Tensor
    scale: torch.Tensor
    lam: torch.Tensor
    Q: torch.Tensor
    a: torch.Tensor
    c: float

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(P, k, d)``."""
        return self.onehot.shape[0], self.onehot.shape[2], self.X.shape[1]

    @classmethod
    def build(cls, X: np.ndarray, train: np.ndarray, labels: np.ndarray, n_classes: int, C: float = 1.0
              ) -> LogisticBatch:
        """Args:
            X: ``[n, d]`` activations (any float dtype; copied to float64, never modified).
            train: ``[P, n]`` bool, the training rows of each problem (each with at least one row).
            labels: ``[P, n]`` ints in ``0..n_classes−1`` (read on training rows only).
            n_classes: ``k``; C: inverse L2 strength.
        """
        with torch_threads(1):
            Xt = torch.as_tensor(np.asarray(X)).to(torch.float64, copy=True)  # [n, d]; never alias the caller's X
            n = Xt.shape[0]
            center = Xt.mean(0)
            Xt -= center  # centred: the problems' means are then small, so E[x²] − μ² loses nothing
            T = torch.as_tensor(np.asarray(train, dtype=np.float64))  # [P, n]
            n_p = T.sum(1)  # [P]
            mean = T @ Xt / n_p[:, None]  # [P, d]
            var = (T @ (Xt * Xt) / n_p[:, None] - mean * mean).clamp_min(0)
            rms = (Xt * Xt).mean(0).sqrt()  # [d]
            scale = var.sqrt()
            scale = torch.where(scale <= CONSTANT_FEATURE * rms, torch.ones_like(scale), scale)
            y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
            onehot = torch.nn.functional.one_hot(y, n_classes).to(torch.float64) * T[:, :, None]  # [P, n, k]
            absent = onehot.sum(1) == 0  # [P, k]
            Q, a, c = preconditioner(Xt, n_classes, 1.0 / (C * n))
        return cls(Xt, center, T, n_p, onehot, absent if bool(absent.any()) else None, mean, scale,
                   1.0 / (C * n_p), Q, a, c)

    def _times_M(self, V: torch.Tensor) -> torch.Tensor:
        """``V M`` for ``V: [m, d]`` (``M`` is symmetric, so this is also ``V Mᵀ``)."""
        VQ = V @ self.Q  # [m, r]
        return self.c * V + (VQ * (self.a - self.c)) @ self.Q.T

    def unpack(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``v: [p, k·d + k]`` (the solver's variables) → ``W: [p, k, d]`` (standardised units), ``b: [p, k]``."""
        p = v.shape[0]
        _, k, d = self.shape
        W = self._times_M(v[:, : k * d].reshape(p * k, d)).reshape(p, k, d)
        return W, v[:, k * d:] * np.sqrt(k)  # the intercepts' curvature at 0 is 1/k: the same rescaling

    def objective(self, v: torch.Tensor, problems: torch.Tensor, with_grad: bool
                  ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``f`` of ``problems`` at ``v: [p, k·d + k]``; with ``with_grad`` also ``∂f/∂v: [p, k·d + k]`` and the
        largest entry of ``∂f/∂(W, b)`` (the optimality measure, in the problem's own units, as
        ``torch.optim.LBFGS`` 's ``tolerance_grad`` was applied to the unbatched probe)."""
        p = v.shape[0]
        _, k, d = self.shape
        W, b = self.unpack(v)
        mean, scale = self.mean[problems], self.scale[problems]  # [p, d]
        A = W / scale[:, None, :]  # [p, k, d]: acts on the centred raw rows
        offset = b - (A * mean[:, None, :]).sum(-1)  # [p, k]
        logits = (self.X @ A.reshape(p * k, d).T).reshape(-1, p, k).transpose(0, 1) + offset[:, None, :]  # [p, n, k]
        T, onehot, n_p, lam = self.train[problems], self.onehot[problems], self.n_train[problems], self.lam[problems]
        target = (logits * onehot).sum(-1)  # [p, n]: the label's logit (0 outside train)
        if self.absent is not None:
            logits = logits.masked_fill(self.absent[problems][:, None, :], -torch.inf)
        lse = torch.logsumexp(logits, -1)  # [p, n]
        f = ((lse - target) * T).sum(1) / n_p + 0.5 * lam * (W * W).sum((1, 2))
        if not with_grad:
            return f, None, None
        R = (torch.exp(logits - lse[..., None]) * T[..., None] - onehot) / n_p[:, None, None]  # [p, n, k]
        gb = R.sum(1)  # [p, k]
        GA = (R.transpose(1, 2).reshape(p * k, -1) @ self.X).reshape(p, k, d)  # Σ_i R_ic x_i
        gW = (GA - gb[..., None] * mean[:, None, :]) / scale[:, None, :] + lam[:, None, None] * W  # [p, k, d]
        kkt = torch.maximum(gW.abs().amax((1, 2)), gb.abs().amax(1))
        gv = torch.cat([self._times_M(gW.reshape(p * k, d)).reshape(p, k * d), gb * np.sqrt(k)], 1)
        return f, gv, kkt

    def solve(self, max_iter: int = 200, tol_grad: float = 1e-6, tol_change: float = 1e-10) -> BatchFit:
        """Fit every problem from ``W = 0, b = 0`` (one thread; the rules: :func:`ivlens.probing.lbfgs.batched_lbfgs`).
        """
        P, k, d = self.shape
        with torch_threads(1):
            res = batched_lbfgs(self.objective, torch.zeros(P, k * d + k, dtype=torch.float64),
                                max_iter=max_iter, tol_grad=tol_grad, tol_change=tol_change)
            W, b = self.unpack(res.x)
            A = W / self.scale[:, None, :]  # [P, k, d]
            intercept = b - (A * (self.mean + self.center)[:, None, :]).sum(-1)
        present = np.ones((P, k), bool) if self.absent is None else ~self.absent.numpy()
        return BatchFit(A.numpy(), intercept.numpy(), (self.mean + self.center).numpy(), self.scale.numpy(),
                        present, res)


def preconditioner(Xc: torch.Tensor, k: int, lam: float, rank: int = PRECONDITIONER_RANK, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The change of variables of the module docstring for the centred rows ``Xc: [n, d]`` and ``k`` classes.

    Returns:
        ``(Q [d, r], a [r], c)`` with ``M = Q diag(a) Qᵀ + c (I − QQᵀ)``: ``Q`` the top ``r ≤ rank`` eigenvectors of
        the correlation matrix, ``a = (Λ/k + λ)^(-1/2)``, ``c = (Λ_r/k + λ)^(-1/2)`` with ``Λ_r`` the next
        eigenvalue (0 when all are kept). Deterministic in ``seed`` (its own generator; the global one is untouched).
    """
    n, d = Xc.shape
    scale = Xc.std(0, unbiased=False)
    Z = Xc / torch.where(scale > 0, scale, torch.ones_like(scale))  # [n, d] standardised
    q = min(rank + 10, n, d)  # oversampled range
    omega = torch.randn(d, q, generator=torch.Generator().manual_seed(seed), dtype=Z.dtype)
    basis = torch.linalg.qr(Z @ omega).Q  # [n, q]
    for _ in range(2):  # power iterations sharpen the top of the spectrum
        basis = torch.linalg.qr(Z @ (Z.T @ basis)).Q
    _, sv, Vt = torch.linalg.svd(basis.T @ Z, full_matrices=False)  # sv [q], Vt [q, d]
    evals = sv * sv / n  # eigenvalues of Σ, descending
    r = min(rank, q)
    rest = float(evals[r]) if q > r else 0.0
    a = (evals[:r] / k + lam).rsqrt()
    return Vt[:r].T.contiguous(), a, (rest / k + lam) ** -0.5
