"""What a probe fit costs on this machine, for the dry run (:mod:`ivlens.estimate` models the rest of a probe run).

It lives with the probes, not in :mod:`ivlens.estimate.calibrate`, because it times the probes' own fit.
"""

from __future__ import annotations

import time

import numpy as np

from ivlens.estimate.calibrate import MEASURED

from .probes import LogisticProbe


def probe_fit_latency(n: int, d: int, n_classes: int, shuffled: bool = False) -> float:
    """Seconds of one :class:`ivlens.probing.probes.LogisticProbe` fit (one thread, as the probes run) on ``n``
    rows of ``d`` features and ``n_classes`` balanced classes: separable clusters (IVs of different subtasks,
    about 50 ms at 640 × 256 × 4 here) or, with ``shuffled``, labels with no signal (the shuffled-label
    control, whose L-BFGS runs longer: about 110 ms). The iteration count depends on the data, so the fit is
    timed, not modelled. CPU time of this process: the fit's own work on its one thread, whatever the load."""
    key = ("probe", n, d, n_classes, shuffled)
    if key in MEASURED:
        return MEASURED[key]
    g = np.random.default_rng(0)
    y = np.arange(n) % n_classes
    X = g.standard_normal((n, d))
    if not shuffled:  # one cluster per class, well apart (probes on IVs reach CV accuracy ~1)
        X += 4 * g.standard_normal((n_classes, d))[y] / np.sqrt(d)
    LogisticProbe().fit(X[:8], y[:8])  # warm-up (autograd, L-BFGS)
    t0 = time.process_time()
    LogisticProbe().fit(X, y)
    MEASURED[key] = max(time.process_time() - t0, 1e-9)
    return MEASURED[key]
