"""Linear geometry of instruction vectors: probes, baselines, 2-D projections and cosine similarity.

Pure functions on one layer's activations ``X: [n, d_model]`` and integer class labels ``y: [n]``.

- :func:`cv_accuracy` — a multinomial logistic-regression probe (:class:`LogisticProbe`: features
  standardised on the training rows, L2 penalty, full-batch L-BFGS in torch) scored by stratified k-fold
  cross-validation: mean ± std of the fold accuracies. The probe is our own ~30 lines rather than
  sklearn's ``LogisticRegression`` because on this machine sklearn's multinomial loss took ~0.1 s per
  L-BFGS step at n=1280 (20 s a layer with its controls); the torch version solves the same convex
  objective in a fraction of that.
- Controls, so that *selectivity* (probe − control) is visible: the same probe on **shuffled labels**
  (what a probe of this capacity gets from memorising noise) and the **majority baseline** (always
  predicting the training folds' most frequent class).
- :func:`heldout_accuracy` — train on some phrasings, test on unseen ones (``train_mask``).
- :func:`lda_2d` / :func:`pca_2d` — 2-D projections (:func:`lda_project` also returns the first discriminant
  as a direction of the IV space, for tracing). LDA runs on the top principal components (at most
  :data:`LDA_PCA_DIM`; sklearn's ``svd`` solver), which keeps d=4096 in well under a second and avoids
  the singular within-class scatter of ``n < d``. With two classes LDA has one axis; the second axis is
  then the top principal direction orthogonal to it.
- :func:`class_cosine` — mean pairwise cosine similarity within (diagonal, self-pairs excluded) and
  between classes, optionally after subtracting the global mean (residual streams share a large common
  component, which makes raw cosines all close to 1).

Every function is deterministic in ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.model_selection import StratifiedKFold

from ivlens.scoped import torch_threads

#: principal components kept before LDA (speed and a well-conditioned within-class scatter at n < d)
LDA_PCA_DIM = 64


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of the per-layer probes."""

    folds: int = 5  # stratified k-fold CV; lowered to the smallest class size when a class is smaller
    C: float = 1.0  # inverse L2 strength: loss = mean cross-entropy + ||W||^2 / (2 C n), as in sklearn
    max_iter: int = 200  # L-BFGS iterations (convergence is usually reached in 10-40)
    n_shuffles: int = 1  # shuffled-label controls averaged
    seed: int = 0


@dataclass(frozen=True)
class CVResult:
    """Fold accuracies of one probe: ``folds: [k]``, plus the majority baseline of each fold."""

    folds: np.ndarray
    majority: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.folds.mean())

    @property
    def std(self) -> float:
        return float(self.folds.std())


class LogisticProbe:
    """Multinomial logistic regression on standardised features, fitted by full-batch L-BFGS (float64).

    Minimises ``mean_i CE(W x_i + b, y_i) + ||W||² / (2 C n)`` (sklearn's objective divided by ``n``),
    a strictly convex problem, so the solution does not depend on the start; runs are deterministic.

    >>> probe = LogisticProbe().fit(X_train, y_train)   # X: [n, d_model], y: [n] ints
    >>> (probe.predict(X_test) == y_test).mean()
    """

    def __init__(self, C: float = 1.0, max_iter: int = 200):
        self.C, self.max_iter = C, max_iter

    def fit(self, X: np.ndarray, y: np.ndarray) -> LogisticProbe:
        self.classes_ = np.unique(y)
        Xs = torch.as_tensor(np.asarray(X)).to(torch.float64, copy=True)  # [n, d]; never alias the caller's X
        mean, scale = Xs.mean(0), Xs.std(0, unbiased=False)
        scale[scale == 0] = 1.0
        Xs.sub_(mean).div_(scale)  # standardised on the training rows only
        self.mean_, self.scale_ = mean.numpy(), scale.numpy()
        t = torch.from_numpy(np.searchsorted(self.classes_, y))  # [n] in 0..C-1
        n, d = Xs.shape
        W = torch.zeros(d, len(self.classes_), dtype=torch.float64, requires_grad=True)  # [d, C]
        b = torch.zeros(len(self.classes_), dtype=torch.float64, requires_grad=True)  # [C]
        lam = 1.0 / (self.C * n)
        opt = torch.optim.LBFGS([W, b], lr=1, max_iter=self.max_iter, tolerance_grad=1e-6,
                                tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(Xs @ W + b, t) + 0.5 * lam * (W * W).sum()
            loss.backward()
            return loss

        # these matmuls are small: extra threads only contend (7x slower under load)
        with torch_threads(1), torch.enable_grad():
            opt.step(closure)
        self.coef_ = W.detach().numpy().T / self.scale_  # [C, d] in the original feature units
        self.intercept_ = b.detach().numpy() - self.coef_ @ self.mean_
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Logits ``[n, C]``."""
        return np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.decision_function(X).argmax(1)]


def make_probe(cfg: ProbeConfig = ProbeConfig()) -> LogisticProbe:
    """A fresh logistic-regression probe with standardised inputs."""
    return LogisticProbe(C=cfg.C, max_iter=cfg.max_iter)


def n_folds(y: np.ndarray, folds: int) -> int:
    """Folds usable for stratified CV: at most the smallest class size (and at least 2)."""
    smallest = int(np.bincount(y)[np.bincount(y) > 0].min())
    if smallest < 2:
        raise ValueError("every class needs at least 2 instructions for cross-validation")
    return max(2, min(folds, smallest))


def majority_accuracy(y_train: np.ndarray, y_test: np.ndarray) -> float:
    """Accuracy of always predicting ``y_train`` 's most frequent class (ties: the smallest label)."""
    return float((y_test == np.bincount(y_train).argmax()).mean())


def cv_accuracy(X: np.ndarray, y: np.ndarray, cfg: ProbeConfig = ProbeConfig(), seed: int | None = None) -> CVResult:
    """Stratified k-fold accuracy of the probe.

    Args:
        X: ``[n, d_model]`` activations; y: ``[n]`` integer labels (at least two classes).
    Returns:
        :class:`CVResult` with the accuracy and the majority baseline of every fold.
    """
    seed = cfg.seed if seed is None else seed
    skf = StratifiedKFold(n_splits=n_folds(y, cfg.folds), shuffle=True, random_state=seed)
    accs, majs = [], []
    for tr, te in skf.split(X, y):
        probe = make_probe(cfg).fit(X[tr], y[tr])
        accs.append(float((probe.predict(X[te]) == y[te]).mean()))
        majs.append(majority_accuracy(y[tr], y[te]))
    return CVResult(np.array(accs), np.array(majs))


def shuffled_cv_accuracy(X: np.ndarray, y: np.ndarray, cfg: ProbeConfig = ProbeConfig()) -> CVResult:
    """The same CV with labels permuted (``cfg.n_shuffles`` permutations, folds pooled): the control."""
    rng = np.random.default_rng(cfg.seed)
    results = [cv_accuracy(X, rng.permutation(y), cfg, seed=cfg.seed + 1 + i) for i in range(cfg.n_shuffles)]
    return CVResult(np.concatenate([r.folds for r in results]), np.concatenate([r.majority for r in results]))


def heldout_accuracy(X: np.ndarray, y: np.ndarray, train_mask: np.ndarray, cfg: ProbeConfig = ProbeConfig()
                     ) -> tuple[float, float]:
    """Train on ``X[train_mask]``, test on the rest (unseen phrasings).

    Returns:
        ``(accuracy, majority baseline)`` on the test rows; NaNs when either side is empty or the training
        side has a single class.
    """
    te = ~train_mask
    if train_mask.sum() == 0 or te.sum() == 0 or len(np.unique(y[train_mask])) < 2:
        return float("nan"), float("nan")
    probe = make_probe(cfg).fit(X[train_mask], y[train_mask])
    return float((probe.predict(X[te]) == y[te]).mean()), majority_accuracy(y[train_mask], y[te])


def _pca(X: np.ndarray, k: int, seed: int) -> PCA:
    k = max(1, min(k, X.shape[0] - 1, X.shape[1]))
    solver = "randomized" if k < min(X.shape) // 2 else "full"
    return PCA(n_components=k, svd_solver=solver, random_state=seed).fit(X)


def pca_2d(X: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-2 principal components: ``(coords [n, 2], explained variance ratio [2])``."""
    pca = _pca(X, 2, seed)
    Z = pca.transform(X)
    if Z.shape[1] < 2:
        Z = np.column_stack([Z, np.zeros(len(Z))])
    ratio = np.zeros(2)
    ratio[: len(pca.explained_variance_ratio_)] = pca.explained_variance_ratio_
    return Z[:, :2], ratio


def lda_2d(X: np.ndarray, y: np.ndarray, seed: int = 0, pca_dim: int = LDA_PCA_DIM) -> tuple[np.ndarray, float]:
    """LDA projection to 2-D (after PCA to ``pca_dim``), and LDA's training accuracy in that subspace.

    Args:
        X: ``[n, d_model]``; y: ``[n]`` with at least two classes.
    Returns:
        ``(coords [n, 2], train accuracy)``. With two classes: (discriminant, top orthogonal PC).
    """
    Z, acc, _ = lda_project(X, y, seed, pca_dim)
    return Z, acc


def lda_project(X: np.ndarray, y: np.ndarray, seed: int = 0, pca_dim: int = LDA_PCA_DIM
                ) -> tuple[np.ndarray, float, np.ndarray]:
    """:func:`lda_2d` and the first discriminant as a direction of the IVs' own space.

    The first coordinate is affine in ``X``: PCA and LDA's ``svd`` transform both subtract a mean and multiply by
    a matrix, so ``coords[:, 0] = X @ axis + c`` with ``axis = components_ᵀ · scalings_[:, 0]`` (``[d_model]``).

    Returns:
        ``(coords [n, 2], train accuracy, axis [d_model])``.
    """
    Xc = X - X.mean(0)
    pca = _pca(Xc, pca_dim, seed)
    Z = pca.transform(Xc)  # [n, k]
    lda = LinearDiscriminantAnalysis(solver="svd").fit(Z, y)
    D = lda.transform(Z)  # [n, min(C-1, k)]
    axis = pca.components_.T @ lda.scalings_[:, 0]  # [d_model]
    if D.shape[1] >= 2:
        return D[:, :2], float(lda.score(Z, y)), axis
    # one discriminant: add the top principal direction of Z orthogonal to it
    w = lda.scalings_[:, 0] / np.linalg.norm(lda.scalings_[:, 0])  # [k]
    R = Z - np.outer(Z @ w, w)
    _, _, vt = np.linalg.svd(R - R.mean(0), full_matrices=False)
    return np.column_stack([D[:, 0], R @ vt[0]]), float(lda.score(Z, y)), axis


def class_cosine(X: np.ndarray, y: np.ndarray, n_classes: int | None = None, center: bool = True) -> np.ndarray:
    """Mean pairwise cosine similarity within and between classes.

    Args:
        X: ``[n, d_model]``; y: ``[n]`` labels in ``0..C-1``; center: subtract the mean over all rows first.
    Returns:
        ``S: [C, C]``: ``S[a, b]`` the mean cosine over pairs (i in a, j in b); the diagonal excludes i == j.
    """
    X = X.astype(np.float64)
    if center:
        X = X - X.mean(0)
    U = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)  # unit rows [n, d]
    C = int(y.max()) + 1 if n_classes is None else n_classes
    onehot = np.zeros((len(y), C))
    onehot[np.arange(len(y)), y] = 1
    sums = onehot.T @ U  # [C, d]: sum of unit vectors per class
    counts = onehot.sum(0)  # [C]
    S = sums @ sums.T  # [C, C]: sum over all pairs of cosines
    denom = np.outer(counts, counts)
    np.fill_diagonal(S, np.diag(S) - counts)  # drop self-pairs (cos = 1 each)
    np.fill_diagonal(denom, counts * (counts - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return S / denom


@dataclass(frozen=True)
class LayerProbe:
    """All probe numbers of one layer (plain floats, ready for a table row)."""

    cv_mean: float
    cv_std: float
    shuffled_mean: float
    shuffled_std: float
    majority: float
    heldout_acc: float
    heldout_std: float
    heldout_majority: float
    n: int
    n_classes: int

    @property
    def selectivity(self) -> float:
        return self.cv_mean - self.shuffled_mean


def probe_layer(X: np.ndarray, y: np.ndarray, heldout_groups: np.ndarray | None = None,
                cfg: ProbeConfig = ProbeConfig()) -> LayerProbe:
    """CV probe, shuffled control, majority baseline and held-out evaluation for one layer.

    Args:
        X: ``[n, d_model]``; y: ``[n]`` integer labels.
        heldout_groups: ``[n]`` ints: ``0`` = always training; each value ``g > 0`` is one held-out test
            set (train on every row not in ``g``, test on ``g``); held-out accuracy is the mean over groups
            (``heldout_std`` their spread). ``None``: no held-out evaluation (NaN).
    """
    cv = cv_accuracy(X, y, cfg)
    sh = shuffled_cv_accuracy(X, y, cfg)
    accs, majs = [], []
    if heldout_groups is not None:
        for g in np.unique(heldout_groups[heldout_groups > 0]):
            a, m = heldout_accuracy(X, y, heldout_groups != g, cfg)
            if not np.isnan(a):
                accs.append(a)
                majs.append(m)
    nan = float("nan")
    return LayerProbe(cv.mean, cv.std, sh.mean, sh.std, float(cv.majority.mean()),
                      float(np.mean(accs)) if accs else nan, float(np.std(accs)) if accs else nan,
                      float(np.mean(majs)) if majs else nan, len(y), len(np.unique(y)))
