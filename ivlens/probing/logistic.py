"""Many multinomial logistic-regression probes on the rows of one activation matrix, or of several (one per layer),
fitted as one batch.

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
- *One batched product for all layers.* Given ``X: [L, n, d]`` (the same rows at ``L`` layers), the ``P`` problems
  are posed at every layer: ``L·P`` problems, each layer with its own centring, standardisation and
  preconditioner. Per objective call the products with ``X`` are one ``torch.bmm`` over the layers, each layer's
  running problems side by side (zero-padded to the layer with the most), and every elementwise step is one
  operation over all layers. One layer per batch paid the solver's Python and dispatch overhead ``L`` times per
  iteration; the arithmetic of each problem is the same either way (the logits are laid out ``[q, n, k]``, so no
  reduction's order depends on the batch, and :data:`MIN_SLOTS` keeps MKL on one kernel): a layer's fits in a
  batch equal its fits alone, bit for bit.
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

>>> batch = LogisticBatch.build(X, train, labels, n_classes=4, C=1.0)   # X [L, n, d] or [n, d]; train, labels [P, n]
>>> fit = batch.solve(max_iter=200)
>>> fit.coef.shape, fit.intercept.shape          # [L·P, k, d], [L·P, k]: on raw features, layer-major
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
#: the fewest problem slots per layer in the batched products: MKL multiplies by a matrix of one or two columns with
#: another kernel (other rounding), so with fewer slots a problem's arithmetic would depend on how many others run
#: beside it; with at least two (``k ≥ 2`` classes each) it never does
MIN_SLOTS = 2


@dataclass(frozen=True)
class BatchFit:
    """The fitted problems of a :class:`LogisticBatch`: ``L·P`` problems, layer-major (problem ``q = l·P + p`` is
    problem ``p`` on layer ``l``; ``L = 1`` for one matrix).

    ``coef: [L·P, k, d]`` and ``intercept: [L·P, k]`` act on raw features (standardisation folded in);
    ``mean, scale: [L·P, d]`` the standardisation of each problem's training rows; ``present: [L·P, k]`` the
    classes of each problem's training rows (the others are never predicted); ``solver``: the L-BFGS run;
    ``n_layers``: ``L``."""

    coef: np.ndarray
    intercept: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    present: np.ndarray
    solver: LBFGSResult
    n_layers: int = 1

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Logits of every problem on the rows of ``X: [n, d]`` (one layer) or ``[L, n, d]`` (problem ``q`` on its
        layer's rows): ``[L·P, n, k]`` (``−inf`` for absent classes)."""
        X = np.asarray(X, dtype=np.float64).reshape(self.n_layers, -1, self.coef.shape[-1])  # [L, n, d]
        P = len(self.coef) // self.n_layers
        logits = np.concatenate([np.einsum("nd,pkd->pnk", X[layer], self.coef[layer * P:(layer + 1) * P])
                                 for layer in range(self.n_layers)]) + self.intercept[:, None, :]
        return np.where(self.present[:, None, :], logits, -np.inf)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class indices ``[L·P, n]`` in ``0..k−1``."""
        return self.decision_function(X).argmax(-1)


@dataclass(frozen=True)
class _Slots:
    """Where the listed problems sit in a zero-padded ``[L, S]`` layout (``S``: the most problems listed on any
    one layer), so that each layer's problems meet its own ``X`` in one batched product (``torch.bmm``).
    ``layer, slot, problem: [q]`` (``problem`` the index within its layer, ``0..P−1``)."""

    layer: torch.Tensor
    slot: torch.Tensor
    problem: torch.Tensor
    S: int

    @classmethod
    def of(cls, problems: torch.Tensor, L: int, P: int) -> _Slots:
        """``problems: [q]`` ascending (as :func:`~ivlens.probing.lbfgs.batched_lbfgs` lists them)."""
        layer = problems // P
        counts = torch.bincount(layer, minlength=L)  # [L]
        first = counts.cumsum(0) - counts  # [L] position of each layer's first listed problem
        slot = torch.arange(len(problems)) - first[layer]
        return cls(layer, slot, problems - layer * P, max(int(counts.max()), MIN_SLOTS))

    def pad(self, t: torch.Tensor, L: int) -> torch.Tensor:
        """``t: [q, ...]`` → ``[L, S, ...]`` (zeros in the unused slots)."""
        out = t.new_zeros(L, self.S, *t.shape[1:])
        out[self.layer, self.slot] = t
        return out


@dataclass
class LogisticBatch:
    """``P`` logistic-regression problems on the rows of each of ``L`` matrices (see the module docstring): ``L·P``
    problems, layer-major (problem ``q = l·P + p`` fits problem ``p`` 's rows and labels on layer ``l``).

    Tensors (float64): ``X: [L, n, d]``, each layer centred on its mean over all rows, ``center: [L, d]``;
    ``train: [P, n]`` 0/1 row weights; ``n_train: [P]``; ``onehot: [P, n, k]`` labels (zero outside ``train``);
    ``absent: [P, k]`` bool or ``None`` (every class present everywhere); ``mean, scale: [L·P, d]`` standardisation
    of each problem's training rows (of its layer's centred ``X``); ``lam: [P]`` ``= 1 / (C n_p)``; each layer's
    preconditioner ``M_l = Q_l diag(a_l) Q_lᵀ + c_l (I − Q_l Q_lᵀ)`` as ``Q: [L, d, r]``, ``a: [L, r]``, ``c: [L]``."""

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
    c: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(L, P, k, d)``."""
        return self.X.shape[0], self.onehot.shape[0], self.onehot.shape[2], self.X.shape[2]

    @classmethod
    def build(cls, X: np.ndarray, train: np.ndarray, labels: np.ndarray, n_classes: int, C: float = 1.0
              ) -> LogisticBatch:
        """Args:
            X: ``[n, d]`` activations, or ``[L, n, d]``: the same rows at ``L`` layers, each with the ``P``
                problems (any float dtype; copied to float64, never modified).
            train: ``[P, n]`` bool, the training rows of each problem (each with at least one row).
            labels: ``[P, n]`` ints in ``0..n_classes−1`` (read on training rows only).
            n_classes: ``k``; C: inverse L2 strength.
        """
        with torch_threads(1):
            Xt = torch.as_tensor(np.asarray(X)).to(torch.float64, copy=True)  # never alias the caller's X
            Xt = Xt.reshape(-1, *Xt.shape[-2:])  # [L, n, d]
            n = Xt.shape[1]
            center = Xt.mean(1)  # [L, d]
            Xt -= center[:, None, :]  # centred: the problems' means are then small, so E[x²] − μ² loses nothing
            T = torch.as_tensor(np.asarray(train, dtype=np.float64))  # [P, n]
            n_p = T.sum(1)  # [P]
            mean = T @ Xt / n_p[:, None]  # [L, P, d]
            var = (T @ (Xt * Xt) / n_p[:, None] - mean * mean).clamp_min(0)
            rms = (Xt * Xt).mean(1).sqrt()  # [L, d]
            scale = var.sqrt()
            scale = torch.where(scale <= CONSTANT_FEATURE * rms[:, None, :], torch.ones_like(scale), scale)
            y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
            onehot = torch.nn.functional.one_hot(y, n_classes).to(torch.float64) * T[:, :, None]  # [P, n, k]
            absent = onehot.sum(1) == 0  # [P, k]
            Q, a, c = zip(*(preconditioner(Xl, n_classes, 1.0 / (C * n)) for Xl in Xt), strict=True)
        return cls(Xt, center, T, n_p, onehot, absent if bool(absent.any()) else None, mean.flatten(0, 1),
                   scale.flatten(0, 1), 1.0 / (C * n_p), torch.stack(Q), torch.stack(a), torch.tensor(c, dtype=torch.float64))

    def _times_M(self, V: torch.Tensor, at: _Slots) -> torch.Tensor:
        """``V M_l`` for ``V: [q, k, d]``, row ``i`` with the ``M`` of its layer ``at.layer[i]`` (``M`` is symmetric,
        so this is also ``V Mᵀ``)."""
        L, _, k, d = self.shape
        Vp = at.pad(V, L).reshape(L, at.S * k, d)  # [L, S·k, d]
        VQ = torch.bmm(Vp, self.Q)  # [L, S·k, r]
        VM = self.c[:, None, None] * Vp + torch.bmm(VQ * (self.a - self.c[:, None])[:, None, :], self.Q.mT)
        return VM.reshape(L, at.S, k, d)[at.layer, at.slot]  # [q, k, d]

    def unpack(self, v: torch.Tensor, at: _Slots | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``v: [q, k·d + k]`` (the solver's variables of the problems ``at`` lists; default all ``L·P``) →
        ``W: [q, k, d]`` (standardised units), ``b: [q, k]``."""
        L, P, k, d = self.shape
        if at is None:
            at = _Slots.of(torch.arange(L * P), L, P)
        W = self._times_M(v[:, : k * d].reshape(-1, k, d), at)
        return W, v[:, k * d:] * np.sqrt(k)  # the intercepts' curvature at 0 is 1/k: the same rescaling

    def objective(self, v: torch.Tensor, problems: torch.Tensor, with_grad: bool
                  ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``f`` of ``problems: [q]`` (ascending) at ``v: [q, k·d + k]``; with ``with_grad`` also
        ``∂f/∂v: [q, k·d + k]`` and the largest entry of ``∂f/∂(W, b)`` (the optimality measure, in the problem's
        own units, as ``torch.optim.LBFGS`` 's ``tolerance_grad`` was applied to the unbatched probe). The products
        with ``X`` are one ``torch.bmm`` over the layers, each layer's listed problems side by side."""
        L, P, k, d = self.shape
        at = _Slots.of(problems, L, P)
        W, b = self.unpack(v, at)
        mean, scale = self.mean[problems], self.scale[problems]  # [q, d]
        A = W / scale[:, None, :]  # [q, k, d]: acts on the centred raw rows
        offset = b - (A * mean[:, None, :]).sum(-1)  # [q, k]
        XA = torch.bmm(self.X, at.pad(A, L).reshape(L, at.S * k, d).mT)  # [L, n, S·k]
        logits = XA.reshape(L, -1, at.S, k)[at.layer, :, at.slot] + offset[:, None, :]  # [q, n, k] contiguous
        p = at.problem
        T, onehot, n_p, lam = self.train[p], self.onehot[p], self.n_train[p], self.lam[p]
        target = (logits * onehot).sum(-1)  # [q, n]: the label's logit (0 outside train)
        if self.absent is not None:
            logits = logits.masked_fill(self.absent[p][:, None, :], -torch.inf)
        lse = torch.logsumexp(logits, -1)  # [q, n]
        f = ((lse - target) * T).sum(1) / n_p + 0.5 * lam * (W * W).sum((1, 2))
        if not with_grad:
            return f, None, None
        R = (torch.exp(logits - lse[..., None]) * T[..., None] - onehot) / n_p[:, None, None]  # [q, n, k]
        gb = R.sum(1)  # [q, k]
        RX = torch.bmm(at.pad(R.transpose(1, 2), L).reshape(L, at.S * k, -1), self.X)  # [L, S·k, d]
        GA = RX.reshape(L, at.S, k, d)[at.layer, at.slot]  # [q, k, d]: Σ_i R_ic x_i
        gW = (GA - gb[..., None] * mean[:, None, :]) / scale[:, None, :] + lam[:, None, None] * W  # [q, k, d]
        kkt = torch.maximum(gW.abs().amax((1, 2)), gb.abs().amax(1))
        gv = torch.cat([self._times_M(gW, at).reshape(-1, k * d), gb * np.sqrt(k)], 1)
        return f, gv, kkt

    def solve(self, max_iter: int = 200, tol_grad: float = 1e-6, tol_change: float = 1e-10) -> BatchFit:
        """Fit every problem from ``W = 0, b = 0`` (one thread; the rules: :func:`ivlens.probing.lbfgs.batched_lbfgs`).
        """
        L, P, k, d = self.shape
        with torch_threads(1):
            res = batched_lbfgs(self.objective, torch.zeros(L * P, k * d + k, dtype=torch.float64),
                                max_iter=max_iter, tol_grad=tol_grad, tol_change=tol_change)
            W, b = self.unpack(res.x)
            A = W / self.scale[:, None, :]  # [L·P, k, d]
            mean = self.mean + self.center.repeat_interleave(P, 0)  # [L·P, d] on raw features
            intercept = b - (A * mean[:, None, :]).sum(-1)
        present = np.ones((L * P, k), bool) if self.absent is None else np.tile(~self.absent.numpy(), (L, 1))
        return BatchFit(A.numpy(), intercept.numpy(), mean.numpy(), self.scale.numpy(), present, res, L)


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
