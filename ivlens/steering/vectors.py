"""Steering directions from instruction vectors (IVs), per layer, and the scale α is measured in.

Every direction is computed from IVs (``resid_post[l]`` at T_inst of instruction-only prompts) of the task's
instruction and its rephrasings, collected by :func:`ivlens.probing.collect.collect_ivs`:

- ``mean``: the mean IV of subtask A;
- ``diff``: mean IV of A − mean IV of B (the task's other subtask);
- ``probe:RUN_DIR``: the direction that separates A from B in a probe run's stored IVs. Probe runs do not yet
  save their weights, so this is the **class-mean difference** A − B of the IVs that run collected (the LDA /
  logistic-regression direction differs from it by the within-class covariance).

Each direction is normalised to unit length per layer, and the edit at layer ``l`` is ``α · s_l · v̂_l`` with
``s_l`` the **mean norm of subtask A's IVs at layer l**: ``α = 1`` adds a vector as long as a typical IV, so one
α grid means the same thing at every layer and for every direction.

Shapes: ``vector layer d_model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ivlens.specs import SpecError

NAMED_VECTORS = ("mean", "diff")


@dataclass(frozen=True)
class Directions:
    """Unit directions ``unit: [vector, layer, d_model]`` float32 named ``names``, the scale ``scale: [layer]``
    (mean IV norm of subtask A), and ``raw_norm: [vector, layer]`` (each direction's norm before normalising)."""

    names: tuple[str, ...]
    unit: torch.Tensor
    scale: torch.Tensor
    raw_norm: torch.Tensor

    def edits(self, alphas: tuple[float, ...]) -> torch.Tensor:
        """The added vectors ``α · s_l · v̂_l`` for every (vector, α), vector-major: ``[vector · alpha, layer,
        d_model]``."""
        a = torch.tensor(alphas, dtype=torch.float32)
        e = a[None, :, None, None] * self.scale[None, None, :, None] * self.unit[:, None]  # [vector, alpha, layer, d]
        return e.reshape(-1, *self.unit.shape[1:])


def parse_vectors(spec: str) -> tuple[str, ...]:
    """``"mean,diff,probe:runs/p"`` → its names, checked (a probe directory must exist)."""
    items = [x.strip() for x in spec.split(",") if x.strip()]
    if not items:
        raise SpecError("--vectors: give at least one of mean, diff, probe:RUN_DIR")
    for x in items:
        if x in NAMED_VECTORS:
            continue
        if x.startswith("probe:"):
            path = Path(x.removeprefix("probe:"))
            if not (path / "ivs").is_dir():
                raise SpecError(f"--vectors: {x!r}: {path} is not a probe run directory (no ivs/ in it); give the "
                                "directory `ivlens probe` wrote")
            continue
        raise SpecError(f"--vectors: {x!r} is not one of mean, diff, probe:RUN_DIR")
    if len(set(items)) != len(items):
        raise SpecError(f"--vectors: {spec!r} repeats a vector")
    return tuple(items)


def parse_alphas(spec: str) -> tuple[float, ...]:
    """``"0,0.5,1,2"`` → ``(0.0, 0.5, 1.0, 2.0)`` (distinct, in the given order)."""
    try:
        out = tuple(float(x) for x in spec.split(",") if x.strip())
    except ValueError:
        raise SpecError(f"--alphas: cannot read {spec!r}; give numbers such as 0,0.5,1,2,4,8") from None
    if not out:
        raise SpecError("--alphas: give at least one value, e.g. 0,0.5,1,2,4,8")
    if len(set(out)) != len(out):
        raise SpecError(f"--alphas: {spec!r} repeats a value")
    if not all(np.isfinite(out)):
        raise SpecError(f"--alphas: {spec!r}: every value must be finite")
    return out


def class_means(X: np.ndarray, is_a: np.ndarray, is_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean of the A rows, mean of the B rows (``[d_model]`` each; B's NaN without B rows) and the mean norm of
    the A rows, from IVs ``X: [n, d_model]`` of one layer."""
    a = X[is_a].astype(np.float64)
    mean_a = a.mean(0)
    mean_b = X[is_b].astype(np.float64).mean(0) if is_b.any() else np.full_like(mean_a, np.nan)
    return mean_a, mean_b, float(np.linalg.norm(a, axis=1).mean())


def directions(names: tuple[str, ...], layers_x: dict[str, list[np.ndarray]], is_a: dict[str, np.ndarray],
               is_b: dict[str, np.ndarray], scale_from: str) -> Directions:
    """Unit directions from IVs.

    Args:
        names: the vectors (``mean``, ``diff``, ``probe:...``).
        layers_x: per IV source (``"task"`` for the task's own collection, or the ``probe:...`` name), the IVs of
            every layer, ``[n, d_model]`` each.
        is_a, is_b: per source, ``[n]`` masks of subtask A's and B's rows.
        scale_from: the source whose A rows give the scale ``s_l``.
    """
    n_layers = len(layers_x[scale_from])
    units, norms = [], []
    for name in names:
        src = "task" if name in NAMED_VECTORS else name
        per_layer, raw = [], []
        for layer in range(n_layers):
            mean_a, mean_b, _ = class_means(layers_x[src][layer], is_a[src], is_b[src])
            v = mean_a if name == "mean" else mean_a - mean_b
            if not np.isfinite(v).all():
                raise SpecError(f"--vectors: {name} needs IVs of the task's other subtask, and there are none; "
                                "use a task with two subtasks or --vectors mean")
            n = float(np.linalg.norm(v))
            per_layer.append(v / n if n > 0 else v)
            raw.append(n)
        units.append(np.stack(per_layer))
        norms.append(raw)
    scale = [class_means(layers_x[scale_from][layer], is_a[scale_from], is_b[scale_from])[2]
             for layer in range(n_layers)]
    return Directions(tuple(names), torch.tensor(np.stack(units), dtype=torch.float32),
                      torch.tensor(scale, dtype=torch.float32), torch.tensor(norms, dtype=torch.float32))
