"""Speed of the per-layer probing at 7B size: synthetic IVs with d_model=4096.

    python benchmarks/probe.py [--n 1600] [--d 4096] [--classes 8]

Prints the seconds of each step of one layer's analysis (what ``probe_run`` does per layer and model):
the CV probe (5 folds), the shuffled-label control, held-out evaluation, LDA (PCA to 64 first, ``svd``),
PCA 2-D and the cosine-similarity matrices, and the accuracies (a planted direction per class, so the probe
should be near 1 and the control near 1/classes).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ivlens.probing.probes import (
    ProbeConfig,
    class_cosine,
    cv_accuracy,
    heldout_accuracy,
    lda_2d,
    pca_2d,
    shuffled_cv_accuracy,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1600, help="instructions (8 subtasks x 200 rephrasings)")
    ap.add_argument("--d", type=int, default=4096, help="d_model")
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    y = np.arange(a.n) % a.classes
    dirs = rng.normal(size=(a.classes, a.d)) / np.sqrt(a.d)
    X = (rng.normal(size=(a.n, a.d)) + 6.0 * dirs[y] + 5.0 * rng.normal(size=a.d)).astype(np.float32)
    train = (np.arange(a.n) // a.classes) % 4 != 3
    cfg = ProbeConfig(seed=a.seed)
    steps = {
        "cv probe (5 folds)": lambda: cv_accuracy(X, y, cfg).mean,
        "shuffled control (5 folds)": lambda: shuffled_cv_accuracy(X, y, cfg).mean,
        "held-out phrasings": lambda: heldout_accuracy(X, y, train, cfg)[0],
        "LDA 2-D (PCA 64 + svd)": lambda: lda_2d(X, y, a.seed)[1],
        "PCA 2-D": lambda: float(pca_2d(X, a.seed)[1].sum()),
        "cosine matrices (raw + centred)": lambda: float(class_cosine(X, y).trace() + class_cosine(X, y, center=False).trace()),
    }
    print(f"n={a.n} d={a.d} classes={a.classes}")
    total = 0.0
    for name, fn in steps.items():
        t = time.perf_counter()
        value = fn()
        dt = time.perf_counter() - t
        total += dt
        print(f"{name:34s} {dt:7.2f} s   value {value:.3f}")
    print(f"{'one layer, all steps':34s} {total:7.2f} s")


if __name__ == "__main__":
    main()
