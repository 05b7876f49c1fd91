"""Probe maths on synthetic activations: a known separable direction (high accuracy), pure noise (chance),
controls, held-out evaluation, projections and cosine similarity against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from ivlens.probing.probes import (
    LogisticProbe,
    ProbeConfig,
    class_cosine,
    cv_accuracy,
    heldout_accuracy,
    lda_2d,
    pca_2d,
    probe_layer,
    shuffled_cv_accuracy,
)


def separable(n_per: int = 60, d: int = 128, n_classes: int = 3, margin: float = 4.0, seed: int = 0):
    """Gaussian noise plus ``margin`` along one random unit direction per class: ``X [n, d], y [n]``."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(n_classes, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    y = np.repeat(np.arange(n_classes), n_per)
    X = rng.normal(size=(len(y), d)) + margin * dirs[y]
    return X.astype(np.float32), y


def test_probe_finds_a_separable_direction():
    X, y = separable()
    res = probe_layer(X, y, (np.arange(len(y)) % 60 >= 45).astype(int), ProbeConfig(folds=5))
    assert res.cv_mean > 0.95
    assert res.heldout_acc > 0.95
    assert res.shuffled_mean < 0.5  # the control stays near chance (1/3)
    assert res.majority == pytest.approx(1 / 3, abs=0.02)
    assert res.selectivity > 0.5


def test_probe_on_pure_noise_is_at_chance():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 50)
    X = rng.normal(size=(len(y), 256)).astype(np.float32)
    res = probe_layer(X, y, (np.arange(len(y)) % 50 >= 38).astype(int))
    # chance is 0.25; 5 folds of 40 give a standard error of about 0.03 on the mean
    assert abs(res.cv_mean - 0.25) < 0.12
    assert abs(res.shuffled_mean - 0.25) < 0.12
    assert abs(res.heldout_acc - 0.25) < 0.2


def test_probe_is_deterministic_and_uses_the_seed():
    X, y = separable(margin=0.6, seed=3)
    a = probe_layer(X, y, cfg=ProbeConfig(seed=7))
    b = probe_layer(X, y, cfg=ProbeConfig(seed=7))
    assert a == b or (np.isnan(a.heldout_acc) and a.cv_mean == b.cv_mean and a.shuffled_mean == b.shuffled_mean)
    c = cv_accuracy(X, y, ProbeConfig(seed=8))
    assert c.folds.shape == (5,)
    assert shuffled_cv_accuracy(X, y, ProbeConfig(n_shuffles=2)).folds.shape == (10,)


def test_logistic_probe_reaches_sklearns_optimum():
    """Same convex objective as sklearn's L2 logistic regression on standardised features, and as low a value."""
    from scipy.special import logsumexp
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 10)) * rng.uniform(0.5, 3, size=10)
    y = (X[:, 0] + 0.8 * rng.normal(size=300) > 0).astype(int) + (X[:, 1] > 1)
    Xs = StandardScaler().fit_transform(X)
    C = 0.5

    def objective(W, b):  # sklearn's: C * sum of log losses + ||W||^2 / 2
        logits = Xs @ W.T + b
        return C * (logsumexp(logits, 1) - logits[np.arange(len(y)), y]).sum() + 0.5 * (W * W).sum()

    ours = LogisticProbe(C=C).fit(X, y)
    W = ours.coef_ * ours.scale_  # back to standardised units
    b = ours.intercept_ + ours.coef_ @ ours.mean_
    ref = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(Xs, y)
    assert objective(W, b) <= objective(ref.coef_, ref.intercept_) * (1 + 1e-6)
    assert (ours.predict(X) == ref.predict(Xs)).mean() > 0.97


def test_heldout_accuracy_trains_only_on_the_mask():
    X, y = separable(n_per=40, n_classes=2)
    mask = np.arange(len(y)) % 40 < 30
    acc, maj = heldout_accuracy(X, y, mask)
    assert acc > 0.95 and maj == pytest.approx(0.5)
    # a training side with one class cannot be fitted
    assert np.isnan(heldout_accuracy(X, y, y == 0)[0])


def test_lda_separates_and_pca_reports_variance():
    X, y = separable(n_per=50, d=300, n_classes=4, margin=5.0)
    Z, train_acc = lda_2d(X, y)
    assert Z.shape == (200, 2) and train_acc > 0.95
    # class means in the 2-D projection are far apart relative to the within-class spread
    means = np.stack([Z[y == c].mean(0) for c in range(4)])
    spread = np.mean([Z[y == c].std(0).mean() for c in range(4)])
    gaps = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(4, 1)]
    assert gaps.min() > 2 * spread
    P, ratio = pca_2d(X)
    assert P.shape == (200, 2) and ratio[0] >= ratio[1] > 0


def test_lda_with_two_classes_adds_an_orthogonal_axis():
    X, y = separable(n_per=50, d=40, n_classes=2)
    Z, acc = lda_2d(X, y)
    assert Z.shape == (100, 2) and acc > 0.95
    assert Z[:, 1].std() > 0


def test_class_cosine_matches_a_loop():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(12, 5)) + 1.0
    y = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2])
    for center in (False, True):
        Xc = X - X.mean(0) if center else X
        U = Xc / np.linalg.norm(Xc, axis=1, keepdims=True)
        ref = np.zeros((3, 3))
        for a in range(3):
            for b in range(3):
                sims = [U[i] @ U[j] for i in np.where(y == a)[0] for j in np.where(y == b)[0] if i != j]
                ref[a, b] = np.mean(sims)
        np.testing.assert_allclose(class_cosine(X, y, center=center), ref, atol=1e-12)


def test_fit_leaves_the_input_unchanged():
    X, y = separable(n_per=20, d=16)
    X = X.astype(np.float64)
    before = X.copy()
    LogisticProbe().fit(X, y)
    np.testing.assert_array_equal(X, before)
