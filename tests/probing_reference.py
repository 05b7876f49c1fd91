"""The probes as ivlens fitted them before batching (up to 0.x of issue 19): one ``torch.optim.LBFGS`` run per fit
(autograd, strong-Wolfe line search, float64, one thread), one fit after another.

Used only by the tests and by ``benchmarks/probe.py``, as the reference that the batched, preconditioned fits
(:mod:`ivlens.probing.logistic`) must reproduce: the same objective, the same folds and shuffles, the same
held-out splits, scored the same way.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from ivlens.probing.probes import CVResult, LayerProbe, ProbeConfig, majority_accuracy, n_folds
from ivlens.scoped import torch_threads


class SequentialProbe:
    """The former ``LogisticProbe``: ``mean CE + ||W||² / (2 C n)`` on features standardised on the training rows,
    ``torch.optim.LBFGS(max_iter, tolerance_grad=1e-6, tolerance_change=1e-10, history_size=20, strong_wolfe)``."""

    def __init__(self, C: float = 1.0, max_iter: int = 200):
        self.C, self.max_iter = C, max_iter

    def fit(self, X: np.ndarray, y: np.ndarray) -> SequentialProbe:
        self.classes_ = np.unique(y)
        Xs = torch.as_tensor(np.asarray(X)).to(torch.float64, copy=True)  # [n, d]
        mean, scale = Xs.mean(0), Xs.std(0, unbiased=False)
        scale[scale == 0] = 1.0
        Xs.sub_(mean).div_(scale)
        self.mean_, self.scale_ = mean.numpy(), scale.numpy()
        t = torch.from_numpy(np.searchsorted(self.classes_, y))
        n, d = Xs.shape
        W = torch.zeros(d, len(self.classes_), dtype=torch.float64, requires_grad=True)  # [d, C]
        b = torch.zeros(len(self.classes_), dtype=torch.float64, requires_grad=True)
        lam = 1.0 / (self.C * n)
        opt = torch.optim.LBFGS([W, b], lr=1, max_iter=self.max_iter, tolerance_grad=1e-6,
                                tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")
        self.evaluations = 0

        def closure():
            self.evaluations += 1
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(Xs @ W + b, t) + 0.5 * lam * (W * W).sum()
            loss.backward()
            return loss

        with torch_threads(1), torch.enable_grad():
            opt.step(closure)
        self.grad_max = float(torch.cat([W.grad.flatten(), b.grad]).abs().max())
        self.coef_ = W.detach().numpy().T / self.scale_  # [C, d] in the original feature units
        self.intercept_ = b.detach().numpy() - self.coef_ @ self.mean_
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[(np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_).argmax(1)]


def objective(coef: np.ndarray, intercept: np.ndarray, X: np.ndarray, y: np.ndarray, C: float) -> float:
    """``mean CE + ||W||² / (2 C n)`` of a fit given on raw features (``coef: [C, d]``), with ``W`` in the units of
    ``X`` standardised on its own rows (``y`` as class indices ``0..C−1``)."""
    from scipy.special import logsumexp

    X = np.asarray(X, dtype=np.float64)
    scale = X.std(0)
    scale[scale == 0] = 1.0
    logits = X @ coef.T + intercept
    ce = (logsumexp(logits, 1) - logits[np.arange(len(y)), y]).mean()
    W = coef * scale
    return float(ce + 0.5 * (W * W).sum() / (C * len(y)))


def cv_folds(X: np.ndarray, y: np.ndarray, cfg: ProbeConfig, seed: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Fold accuracies, majority baselines and the fitted probes of one stratified CV, fit after fit."""
    skf = StratifiedKFold(n_splits=n_folds(y, cfg.folds), shuffle=True, random_state=seed)
    accs, majs, probes = [], [], []
    for tr, te in skf.split(X, y):
        probe = SequentialProbe(cfg.C, cfg.max_iter).fit(X[tr], y[tr])
        accs.append(float((probe.predict(X[te]) == y[te]).mean()))
        majs.append(majority_accuracy(y[tr], y[te]))
        probes.append(probe)
    return np.array(accs), np.array(majs), probes


def cv_accuracy(X: np.ndarray, y: np.ndarray, cfg: ProbeConfig = ProbeConfig(), seed: int | None = None) -> CVResult:
    accs, majs, _ = cv_folds(X, y, cfg, cfg.seed if seed is None else seed)
    return CVResult(accs, majs)


def shuffled_cv_accuracy(X: np.ndarray, y: np.ndarray, cfg: ProbeConfig = ProbeConfig()) -> CVResult:
    rng = np.random.default_rng(cfg.seed)
    results = [cv_accuracy(X, rng.permutation(y), cfg, seed=cfg.seed + 1 + i) for i in range(cfg.n_shuffles)]
    return CVResult(np.concatenate([r.folds for r in results]), np.concatenate([r.majority for r in results]))


def heldout_accuracy(X: np.ndarray, y: np.ndarray, train_mask: np.ndarray, cfg: ProbeConfig = ProbeConfig()
                     ) -> tuple[float, float]:
    te = ~train_mask
    if train_mask.sum() == 0 or te.sum() == 0 or len(np.unique(y[train_mask])) < 2:
        return float("nan"), float("nan")
    probe = SequentialProbe(cfg.C, cfg.max_iter).fit(X[train_mask], y[train_mask])
    return float((probe.predict(X[te]) == y[te]).mean()), majority_accuracy(y[train_mask], y[te])


def layer_accuracies(X: np.ndarray, y: np.ndarray, heldout_groups: np.ndarray | None = None,
                     cfg: ProbeConfig = ProbeConfig()) -> dict[str, np.ndarray]:
    """Every fit's test accuracy of one layer's probe, fit after fit, in the order of
    :func:`ivlens.probing.probes.layer_fits`: ``cv`` and ``shuffled`` fold by fold, ``heldout`` group by group
    (with the majority baselines ``cv_majority`` and ``heldout_majority``)."""
    cv = cv_accuracy(X, y, cfg)
    sh = shuffled_cv_accuracy(X, y, cfg)
    accs, majs = [], []
    if heldout_groups is not None:
        for g in np.unique(heldout_groups[heldout_groups > 0]):
            a, m = heldout_accuracy(X, y, heldout_groups != g, cfg)
            if not np.isnan(a):
                accs.append(a)
                majs.append(m)
    return {"cv": cv.folds, "cv_majority": cv.majority, "shuffled": sh.folds, "heldout": np.array(accs),
            "heldout_majority": np.array(majs)}


def summary(acc: dict[str, np.ndarray], y: np.ndarray) -> LayerProbe:
    """The :class:`LayerProbe` row of :func:`layer_accuracies`' fits."""
    ho, nan = acc["heldout"], float("nan")
    return LayerProbe(float(acc["cv"].mean()), float(acc["cv"].std()), float(acc["shuffled"].mean()),
                      float(acc["shuffled"].std()), float(acc["cv_majority"].mean()),
                      float(ho.mean()) if len(ho) else nan, float(ho.std()) if len(ho) else nan,
                      float(acc["heldout_majority"].mean()) if len(ho) else nan, len(y), len(np.unique(y)))


def probe_layer(X: np.ndarray, y: np.ndarray, heldout_groups: np.ndarray | None = None,
                cfg: ProbeConfig = ProbeConfig()) -> LayerProbe:
    return summary(layer_accuracies(X, y, heldout_groups, cfg), y)
