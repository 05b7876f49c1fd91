"""What a probe run's fits cost on this machine, for the dry run (:mod:`ivlens.estimate` models the rest of a probe
run).

It lives with the probes, not in :mod:`ivlens.estimate.calibrate`, because it times the probes' own fits.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ivlens.estimate.calibrate import MEASURED
from ivlens.scoped import torch_threads

from .probes import ProbeConfig, probe_layers

#: the most synthetic layers one cost measurement fits together (the run fits up to
#: :func:`~ivlens.probing.probes.layers_per_batch` at once; a larger batch costs a little less per layer still)
COST_LAYERS = 3


def probe_layer_latency(n: int, d: int, n_classes: int, heldout: bool = True, folds: int = 5,
                        n_shuffles: int = 1, layers: int = 1) -> float:
    """CPU seconds of one layer's fits of one probe, as ``ivlens probe`` runs them: one
    :func:`ivlens.probing.probes.probe_layers` call (per layer ``folds`` CV fits, ``folds × n_shuffles``
    shuffled-label fits, the held-out split when ``heldout``, the refit on all rows; the fits of ``layers`` layers
    solved as one batch on one thread, at most :data:`COST_LAYERS`), divided by ``layers``, on ``n`` rows of ``d``
    features and ``n_classes`` balanced classes. The rows are synthetic instruction vectors shaped like real ones
    where it sets the solver's iteration count: separable class clusters in a space whose correlation spectrum
    decays as a power law (SmolLM2's IVs: 111, 12, 1.1, 0.06 at eigenvalues 1, 9, 65, 257), with a large common
    offset; each layer its own draw. One layer: about 0.38 s at 804 × 576 × 4 here, where the real fits on
    SmolLM2's IVs took 0.48-0.56 s (1.4 s at its first layer; ``benchmarks/probe.py``). CPU time of this process:
    the fits' own work on their one thread, whatever the load."""
    layers = max(1, min(layers, COST_LAYERS))
    key = ("probe-layer", n, d, n_classes, heldout, folds, n_shuffles, layers)
    if key in MEASURED:
        return MEASURED[key]
    y = np.arange(n) % n_classes
    with torch_threads(1):  # numpy's threads would spin on a loaded machine: one thread, torch's generator
        g = torch.Generator().manual_seed(0)
        m = min(d, 256)  # directions of a power-law spectrum (j+1)^-1.2 e^(-8j/d), as SmolLM2's IVs; a floor beyond
        j = torch.arange(m, dtype=torch.float64)
        spectrum = ((j + 1.0) ** -1.2 * torch.exp(-8.0 * j / d)).sqrt()  # [m] standard deviations
        Xs = []
        for _ in range(layers):
            basis = torch.linalg.qr(torch.randn(d, m, generator=g, dtype=torch.float64)).Q  # [d, m] orthonormal
            means = torch.randn(n_classes, m, generator=g, dtype=torch.float64)  # separable clusters (CV accuracy ~1)
            X = ((torch.randn(n, m, generator=g, dtype=torch.float64) + means[y]) * spectrum) @ basis.T  # [n, d]
            X += spectrum[-1] * torch.randn(n, d, generator=g, dtype=torch.float64)
            X += 20 * spectrum[0] * torch.randn(d, generator=g, dtype=torch.float64)  # the common offset
            Xs.append(X)
    X = torch.stack(Xs).numpy()  # [layers, n, d]
    groups = ((np.arange(n) // n_classes) % 4 == 3).astype(int) if heldout else None
    cfg = ProbeConfig(folds=folds, n_shuffles=n_shuffles)
    probe_layers(X[:, : 4 * n_classes, :8], y[: 4 * n_classes], cfg=ProbeConfig(folds=2), refit=True)  # warm-up
    t0 = time.process_time()
    probe_layers(X, y, groups, cfg, refit=True)
    MEASURED[key] = max(time.process_time() - t0, 1e-9) / layers
    return MEASURED[key]
