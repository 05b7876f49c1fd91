"""Linear geometry of instruction vectors: probes, baselines, 2-D projections and cosine similarity.

Pure functions on one layer's activations ``X: [n, d_model]`` and integer class labels ``y: [n]``.

- :func:`cv_accuracy` — a multinomial logistic-regression probe (:class:`LogisticProbe`: features
  standardised on the training rows, L2 penalty, ``mean CE + ||W||² / (2 C n)``) scored by stratified k-fold
  cross-validation: mean ± std of the fold accuracies.
- Controls, so that *selectivity* (probe − control) is visible: the same probe on **shuffled labels**
  (what a probe of this capacity gets from memorising noise) and the **majority baseline** (always
  predicting the training folds' most frequent class).
- :func:`heldout_accuracy` — train on some phrasings, test on unseen ones (``train_mask``).
- :func:`probe_layer` — all of the above for one layer; every fit of the layer (CV folds, shuffled-label
  folds, held-out splits and, with :func:`probe_layer_fitted`, the refit on all rows) is **one batched problem**
  (:class:`ivlens.probing.logistic.LogisticBatch`, :mod:`ivlens.probing.lbfgs`): one matrix product for all fits,
  preconditioned L-BFGS, analytic gradients. The fits are independent and convex and keep their own optimiser
  state, so each reaches the minimiser it would reach alone; batching and preconditioning change the path and the
  cost, not the objective. On the organisms' IVs this is 5.9× less CPU than one ``torch.optim.LBFGS`` run per fit
  (``benchmarks/probe.py``), and the shuffled-label controls now converge (``|∇f| ≤ 1e-6``) where they used to
  stop at the 200-iteration limit. The probe is our own rather than sklearn's ``LogisticRegression``: sklearn's
  multinomial loss took ~0.1 s per L-BFGS step at n=1280 on this machine.
- :func:`probe_layers` — :func:`probe_layer` at several layers of the same rows, all their fits one batch (what
  ``ivlens probe`` runs): the solver's per-iteration overhead is paid once, not once per layer, and each layer's
  numbers are bit for bit those of :func:`probe_layer`. On the organisms' IVs (3 probes × 6 layers × 3 models)
  the fits took 13-18 CPU s instead of 21-23 layer by layer on the loaded 2-core machine of issue 19: the rest is
  the fits' own arithmetic (the two products with ``X``, ``logsumexp``, the two-loop recursion), not overhead.
- :func:`lda_2d` / :func:`pca_2d` — 2-D projections (:func:`lda_project` also returns the first discriminant
  as a direction of the IV space, for tracing). LDA runs on the top principal components (at most
  :data:`LDA_PCA_DIM`; sklearn's ``svd`` solver), which keeps d=4096 in well under a second and avoids
  the singular within-class scatter of ``n < d``. With two classes LDA has one axis; the second axis is
  then the top principal direction orthogonal to it. Both run numpy's and scipy's BLAS on one thread: their
  matrices are small (``n × 64``), and on the loaded 2-core machine of issue 19 OpenBLAS's second thread made the
  organisms' LDA and PCA 10-40× slower in wall time (about 1 s a layer instead of 0.05 s); the float32 results
  differ from two threads' in the last bits only.
- :func:`class_cosine` — mean pairwise cosine similarity within (diagonal, self-pairs excluded) and
  between classes, optionally after subtracting the global mean (residual streams share a large common
  component, which makes raw cosines all close to 1).

Every function is deterministic in ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ivlens.scoped import blas_threads

from .logistic import BatchFit, LogisticBatch

if TYPE_CHECKING:  # scikit-learn is imported where it is used: a process that fits no probe does not pay its import
    from sklearn.decomposition import PCA

#: principal components kept before LDA (speed and a well-conditioned within-class scatter at n < d)
LDA_PCA_DIM = 64
#: the most memory one solve of several layers' fits may take (:func:`layers_per_batch`)
LAYER_BATCH_BYTES = 1 << 28


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of the per-layer probes."""

    folds: int = 5  # stratified k-fold CV; lowered to the smallest class size when a class is smaller
    C: float = 1.0  # inverse L2 strength: loss = mean cross-entropy + ||W||^2 / (2 C n), as in sklearn
    max_iter: int = 200  # L-BFGS iterations per fit (preconditioned, convergence takes ~30-90)
    n_shuffles: int = 1  # shuffled-label permutations averaged (one is enough for a chance baseline: docs/concepts.md)
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
    """Multinomial logistic regression on standardised features (float64), for one training set.

    Minimises ``mean_i CE(W x_i + b, y_i) + ||W||² / (2 C n)`` (sklearn's objective divided by ``n``) on the
    features standardised on the training rows: a strictly convex problem, so the solution does not depend on
    the start; runs are deterministic. Fitted by :class:`ivlens.probing.logistic.LogisticBatch` as a batch of
    one (:func:`probe_layer` fits many at once). After ``fit``: ``coef_: [C, d]`` and ``intercept_: [C]`` on raw
    features, ``mean_, scale_: [d]`` the standardisation, ``classes_``, ``n_iter_``.

    >>> probe = LogisticProbe().fit(X_train, y_train)   # X: [n, d_model], y: [n] ints
    >>> (probe.predict(X_test) == y_test).mean()
    """

    def __init__(self, C: float = 1.0, max_iter: int = 200):
        self.C, self.max_iter = C, max_iter

    def fit(self, X: np.ndarray, y: np.ndarray) -> LogisticProbe:
        classes = np.unique(y)
        codes = np.searchsorted(classes, y)[None]  # [1, n] in 0..C-1
        fit = LogisticBatch.build(X, np.ones(codes.shape, dtype=bool), codes, len(classes), self.C
                                  ).solve(self.max_iter)
        return self._take(fit, 0, classes)

    def _take(self, fit: BatchFit, p: int, classes: np.ndarray) -> LogisticProbe:
        """Adopt problem ``p`` of a batch fitted over ``classes`` (only the classes of its training rows)."""
        present = fit.present[p]
        self.classes_ = classes[present]
        self.coef_ = fit.coef[p][present]  # [C, d] in the original feature units
        self.intercept_ = fit.intercept[p][present]
        self.mean_, self.scale_ = fit.mean[p], fit.scale[p]
        self.n_iter_ = int(fit.solver.iterations[p])
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


@dataclass
class ProbeFits:
    """The fits of one layer, solved as one batch: each problem's kind (``cv``, ``shuffled``, ``heldout``,
    ``refit``), training and test rows (``[n]`` bool) and labels (``[n]``; permuted for ``shuffled``).

    >>> fits = ProbeFits(y); fits.add_cv("cv", y, cfg, cfg.seed); acc, maj, batch = fits.solve(X, cfg)
    """

    y: np.ndarray
    kind: list[str] = field(default_factory=list)
    train: list[np.ndarray] = field(default_factory=list)
    test: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)

    def add(self, kind: str, train: np.ndarray, labels: np.ndarray) -> None:
        self.kind.append(kind)
        self.train.append(train)
        self.test.append(~train)
        self.labels.append(labels)

    def add_cv(self, kind: str, labels: np.ndarray, cfg: ProbeConfig, seed: int) -> None:
        """The stratified folds of ``labels`` (shuffled with ``seed``): one problem per fold."""
        from sklearn.model_selection import StratifiedKFold

        n = len(labels)
        skf = StratifiedKFold(n_splits=n_folds(labels, cfg.folds), shuffle=True, random_state=seed)
        for tr, _ in skf.split(np.zeros((n, 1)), labels):
            train = np.zeros(n, dtype=bool)
            train[tr] = True
            self.add(kind, train, labels)

    def rows(self, kind: str) -> list[int]:
        return [p for p, k in enumerate(self.kind) if k == kind]

    def solve(self, X: np.ndarray, cfg: ProbeConfig) -> tuple[np.ndarray, np.ndarray, BatchFit, np.ndarray]:
        """Fit every problem on ``X: [n, d]``, or on every layer of ``X: [L, n, d]`` (the same rows at ``L``
        layers), at once.

        Returns:
            ``(accuracy, majority, fit, classes)``: test accuracy and majority baseline of each problem (``[P]``, or
            ``[L, P]`` for ``[L, n, d]``; NaN without test rows), the batch's fit (problem ``p`` of layer ``l`` is its
            problem ``l·P + p``) and the label values its class indices stand for.
        """
        classes = np.unique(self.y)
        codes = np.searchsorted(classes, np.stack(self.labels))  # [P, n]
        train = np.stack(self.train)
        fit = LogisticBatch.build(X, train, codes, len(classes), cfg.C).solve(cfg.max_iter)
        P = len(codes)
        pred = fit.predict(X).reshape(fit.n_layers, P, -1)  # [L, P, n]
        acc, maj = np.full((fit.n_layers, P), np.nan), np.full((fit.n_layers, P), np.nan)
        for p, (tr, te, lab) in enumerate(zip(self.train, self.test, self.labels, strict=True)):
            if te.any():
                acc[:, p] = (pred[:, p][:, te] == codes[p][te]).mean(1)
                maj[:, p] = majority_accuracy(lab[tr], lab[te])
        if np.ndim(X) == 2:
            return acc[0], maj[0], fit, classes
        return acc, maj, fit, classes


def _shuffles(fits: ProbeFits, y: np.ndarray, cfg: ProbeConfig) -> None:
    """The shuffled-label controls: ``cfg.n_shuffles`` permutations of ``y``, each scored by its own CV."""
    rng = np.random.default_rng(cfg.seed)
    for i in range(cfg.n_shuffles):
        fits.add_cv("shuffled", rng.permutation(y), cfg, cfg.seed + 1 + i)


def cv_accuracy(X: np.ndarray, y: np.ndarray, cfg: ProbeConfig = ProbeConfig(), seed: int | None = None) -> CVResult:
    """Stratified k-fold accuracy of the probe (the folds fitted as one batch).

    Args:
        X: ``[n, d_model]`` activations; y: ``[n]`` integer labels (at least two classes).
    Returns:
        :class:`CVResult` with the accuracy and the majority baseline of every fold.
    """
    fits = ProbeFits(y)
    fits.add_cv("cv", y, cfg, cfg.seed if seed is None else seed)
    acc, maj, _, _ = fits.solve(X, cfg)
    return CVResult(acc, maj)


def shuffled_cv_accuracy(X: np.ndarray, y: np.ndarray, cfg: ProbeConfig = ProbeConfig()) -> CVResult:
    """The same CV with labels permuted (``cfg.n_shuffles`` permutations, folds pooled): the control."""
    fits = ProbeFits(y)
    _shuffles(fits, y, cfg)
    acc, maj, _, _ = fits.solve(X, cfg)
    return CVResult(acc, maj)


def _heldout_fittable(y: np.ndarray, train_mask: np.ndarray) -> bool:
    return bool(train_mask.any()) and bool((~train_mask).any()) and len(np.unique(y[train_mask])) >= 2


def heldout_accuracy(X: np.ndarray, y: np.ndarray, train_mask: np.ndarray, cfg: ProbeConfig = ProbeConfig()
                     ) -> tuple[float, float]:
    """Train on ``X[train_mask]``, test on the rest (unseen phrasings).

    Returns:
        ``(accuracy, majority baseline)`` on the test rows; NaNs when either side is empty or the training
        side has a single class.
    """
    if not _heldout_fittable(y, train_mask):
        return float("nan"), float("nan")
    fits = ProbeFits(y)
    fits.add("heldout", np.asarray(train_mask, dtype=bool), y)
    acc, maj, _, _ = fits.solve(X, cfg)
    return float(acc[0]), float(maj[0])


def _pca(X: np.ndarray, k: int, seed: int) -> PCA:
    from sklearn.decomposition import PCA

    k = max(1, min(k, X.shape[0] - 1, X.shape[1]))
    solver = "randomized" if k < min(X.shape) // 2 else "full"
    return PCA(n_components=k, svd_solver=solver, random_state=seed).fit(X)


@blas_threads(1)
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


@blas_threads(1)
def lda_project(X: np.ndarray, y: np.ndarray, seed: int = 0, pca_dim: int = LDA_PCA_DIM
                ) -> tuple[np.ndarray, float, np.ndarray]:
    """:func:`lda_2d` and the first discriminant as a direction of the IVs' own space.

    The first coordinate is affine in ``X``: PCA and LDA's ``svd`` transform both subtract a mean and multiply by
    a matrix, so ``coords[:, 0] = X @ axis + c`` with ``axis = components_ᵀ · scalings_[:, 0]`` (``[d_model]``).

    Returns:
        ``(coords [n, 2], train accuracy, axis [d_model])``.
    """
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

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
    #: bootstrap standard deviation of ``heldout_acc`` over the held-out rows (:func:`heldout_bootstrap_std`)
    heldout_std: float
    heldout_majority: float
    n: int
    n_classes: int
    #: held-out rows the held-out accuracy is measured on (all groups together; 0 without held-out evaluation).
    #: Where every one is right, ``heldout_std`` is 0 (no resample can miss); the error rate is then still only
    #: bounded by about ``3 / heldout_n`` (95 %, the rule of three)
    heldout_n: int = 0

    @property
    def selectivity(self) -> float:
        return self.cv_mean - self.shuffled_mean


def probe_layer(X: np.ndarray, y: np.ndarray, heldout_groups: np.ndarray | None = None,
                cfg: ProbeConfig = ProbeConfig()) -> LayerProbe:
    """CV probe, shuffled control, majority baseline and held-out evaluation for one layer, fitted as one batch.

    Args:
        X: ``[n, d_model]``; y: ``[n]`` integer labels.
        heldout_groups: ``[n]`` ints: ``0`` = always training; each value ``g > 0`` is one held-out test
            set (train on every row not in ``g``, test on ``g``); held-out accuracy is the mean over groups
            (``heldout_std`` its bootstrap standard deviation over the held-out rows, for the fitted probes:
            :func:`heldout_bootstrap_std`). ``None``: no held-out evaluation (NaN).
    """
    return probe_layers(np.asarray(X)[None], y, heldout_groups, cfg)[0][0]


def probe_layer_fitted(X: np.ndarray, y: np.ndarray, heldout_groups: np.ndarray | None = None,
                       cfg: ProbeConfig = ProbeConfig()) -> tuple[LayerProbe, LogisticProbe]:
    """:func:`probe_layer` and the probe refitted on all rows (for its weights), in the same batch."""
    res, refit = probe_layers(np.asarray(X)[None], y, heldout_groups, cfg, refit=True)[0]
    assert refit is not None
    return res, refit


def probe_layers(X: np.ndarray, y: np.ndarray, heldout_groups: np.ndarray | None = None,
                 cfg: ProbeConfig = ProbeConfig(), refit: bool = False
                 ) -> list[tuple[LayerProbe, LogisticProbe | None]]:
    """:func:`probe_layer` (with ``refit``, :func:`probe_layer_fitted`) at every layer of ``X: [L, n, d_model]``
    (the same rows and labels ``y: [n]`` at ``L`` layers), the fits of all layers solved as one batch: each
    L-BFGS iteration is one set of batched operations for every layer, not one per layer. Each layer's fits keep
    their own activations, standardisation, preconditioner and optimiser state, so each layer's numbers are those
    of :func:`probe_layer` on ``X[l]``.

    Returns:
        ``[(LayerProbe, refitted probe or None)]``, one per layer.
    """
    fits = layer_fits(y, heldout_groups, cfg, refit)
    acc, maj, fit, classes = fits.solve(X, cfg)  # [L, P]
    cv, sh, ho = fits.rows("cv"), fits.rows("shuffled"), fits.rows("heldout")
    nan = float("nan")
    n_test = np.array([int(fits.test[p].sum()) for p in ho], dtype=np.int64)
    out = []
    for layer in range(len(acc)):
        a, m = acc[layer], maj[layer]
        ho_std = heldout_bootstrap_std(a[ho], n_test) if ho else nan
        res = LayerProbe(float(a[cv].mean()), float(a[cv].std()), float(a[sh].mean()), float(a[sh].std()),
                         float(m[cv].mean()), float(a[ho].mean()) if ho else nan, ho_std,
                         float(m[ho].mean()) if ho else nan, len(y), len(np.unique(y)), int(n_test.sum()))
        probe = None
        if refit:  # the refit is problem l·P + p of the batch
            probe = LogisticProbe(cfg.C, cfg.max_iter)._take(fit, layer * len(fits.kind) + fits.rows("refit")[0],
                                                             classes)
        out.append((res, probe))
    return out


def layer_fits(y: np.ndarray, heldout_groups: np.ndarray | None, cfg: ProbeConfig, refit: bool = False) -> ProbeFits:
    """Every fit of one layer's probe, as :func:`probe_layer` solves them: the CV folds (``cv``), the folds of each
    shuffled-label control (``shuffled``), one held-out split per group (``heldout``) and, with ``refit``, the fit
    on all rows (``refit``). ``ProbeFits.solve(X, cfg)`` then gives every fit's accuracy (fold by fold)."""
    fits = ProbeFits(y)
    fits.add_cv("cv", y, cfg, cfg.seed)
    _shuffles(fits, y, cfg)
    if heldout_groups is not None:
        for g in np.unique(heldout_groups[heldout_groups > 0]):
            train = heldout_groups != g
            if _heldout_fittable(y, train):
                fits.add("heldout", train, y)
    if refit:
        fits.add("refit", np.ones(len(y), dtype=bool), y)
    return fits


def layers_per_batch(n: int, d: int, n_classes: int, n_fits: int, history: int = 20,
                     budget: int = LAYER_BATCH_BYTES) -> int:
    """How many layers :func:`probe_layers` may fit in one solve within ``budget`` bytes: per layer its float64
    activations (``[n, d]``, about three copies), and per fit the solver's state (``2·history`` curvature pairs and
    a few vectors of ``k·d + k`` variables) and the objective's ``[n, k]`` temporaries. At least 1.

    >>> layers_per_batch(804, 576, 4, 13)   # SmolLM2's IVs of adjectives + animals: 10 layers at once
    10
    """
    variables = n_classes * d + n_classes
    per_layer = 8 * (3 * n * d + n_fits * ((2 * history + 8) * variables + 6 * n * n_classes))
    return max(1, budget // per_layer)


def heldout_bootstrap_std(acc: np.ndarray, n_test: np.ndarray) -> float:
    """The bootstrap standard deviation of the held-out accuracy over its test rows, in closed form (no refits,
    no resampling): ``acc: [G]`` the accuracy of each held-out group's fitted probe on its ``n_test: [G]`` rows.
    Resampling each group's rows with replacement, the mean of ``n`` 0/1 outcomes of rate ``a`` has variance
    ``a (1 − a) / n`` (the ideal bootstrap's, exactly); the held-out accuracy is the mean over groups, so its
    standard deviation is ``√(Σ_g a_g (1 − a_g) / n_g) / G``. It says how much the accuracy would move with other
    held-out phrasings of the same kind; it does not include the spread of refitting the probe."""
    acc, n_test = np.asarray(acc, float), np.asarray(n_test, float)
    return float(np.sqrt((acc * (1 - acc) / n_test).sum()) / len(acc))
