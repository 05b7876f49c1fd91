"""Steering directions, per layer, from instruction vectors (IVs) or a probe run, and the scale α is measured in.

``mean`` and ``diff`` are computed from the IVs (``resid_post[l]`` at T_inst of instruction-only prompts) of the
task's instruction and its rephrasings, collected by :func:`ivlens.probing.collect.collect_ivs`; the others are
read from a probe run directory (``ivlens probe``) through :mod:`ivlens.probing.weights`, the loaders
``ivlens trace --readout`` uses, under the tracer's source names:

- ``mean``: the mean IV of subtask A;
- ``diff``: mean IV of A − mean IV of B (the task's other subtask);
- ``probe:RUN_DIR``: the probe's **A-vs-B direction** ``coef[A] − coef[B]`` at the steered layer
  (:func:`~ivlens.probing.weights.probe_contrast`; the most specific probe knowing both, ``task:<task>`` before
  ``all``). The probe's logits are ``coef · x + intercept`` on the raw IV (standardisation folded in), so moving
  ``x`` along it raises A's logit against B's, ``logit_A − logit_B``, at the rate ``‖coef[A] − coef[B]‖``; for a
  binary probe that margin is the whole decision. It differs from ``diff`` by the within-class covariance
  (and the L2 penalty) the probe accounts for;
- ``means:RUN_DIR``: mean IV of A − mean IV of B of the IVs the probe run stored
  (:func:`~ivlens.probing.weights.class_mean_difference`): ``diff`` on another collection of IVs.

``@MODEL`` after ``RUN_DIR`` takes the direction of another model of the probe run; by default each steered model
uses its own (the probe run's model of the same label). A layer the probe run did not probe cannot be steered
along its direction (refused before the run starts); the other layers' entries are zero, with a NaN raw norm.

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

from ivlens.runs import slug
from ivlens.specs import SpecError

NAMED_VECTORS = ("mean", "diff")
#: directions read from a probe run directory, named as ``ivlens trace --readout`` names their sources
RUN_VECTORS = ("probe", "means")
SYNTAX = "mean, diff, probe:RUN_DIR, means:RUN_DIR (RUN_DIR optionally followed by @MODEL)"


@dataclass(frozen=True)
class RunVector:
    """A direction of a probe run: ``kind`` (``probe`` or ``means``), the run directory ``path``, and ``model``
    (``@MODEL``; ``None``: the steered model's own)."""

    kind: str
    path: Path
    model: str | None = None

    @classmethod
    def parse(cls, name: str) -> RunVector | None:
        """``"probe:runs/p@organism-sft"`` → its parts; ``None`` for a named vector (``mean``, ``diff``)."""
        kind, sep, body = name.partition(":")
        if kind not in RUN_VECTORS or not sep:
            return None
        path, _, model = body.rpartition("@") if "@" in body else (body, "", None)
        if not path or model == "":
            raise SpecError(f"--vectors: {name!r}: give {kind}:RUN_DIR or {kind}:RUN_DIR@MODEL")
        return cls(kind, Path(path), model)

    def slug(self, steered: str) -> str:
        """The probe run's name of the model whose direction steers model ``steered``."""
        return slug(self.model or steered)

    def layers(self, steered: str, option: str) -> list[int]:
        """The layers the probe run has this direction at for model ``steered``."""
        from ivlens.probing.weights import iv_layers, probed_layers

        get = probed_layers if self.kind == "probe" else iv_layers
        return get(self.path, self.slug(steered), option)

    def direction(self, steered: str, layer: int, a: str, b: str, option: str) -> np.ndarray:
        """The raw direction ``[d_model]`` (float64) separating A from B at ``layer``, for model ``steered``."""
        from ivlens.probing.weights import class_mean_difference, probe_contrast

        get = probe_contrast if self.kind == "probe" else class_mean_difference
        return get(self.path, self.slug(steered), layer, a, b, option).vector


def _check_run_dir(name: str, rv: RunVector) -> None:
    inside = "probe_weights" if rv.kind == "probe" else "ivs"
    if not rv.path.is_dir():
        raise SpecError(f"--vectors: {name!r}: {rv.path} is not a probe run directory (no such directory); give the "
                        "directory `ivlens probe` wrote")
    if not (rv.path / inside).is_dir():
        old = " (a probe run of an older ivlens, before probe weights were saved: rerun `ivlens probe`)" \
            if rv.kind == "probe" and (rv.path / "ivs").is_dir() else ""
        raise SpecError(f"--vectors: {name!r}: {rv.path} is not a probe run directory (no {inside}/ in it){old}; "
                        "give the directory `ivlens probe` wrote")


def parse_vectors(spec: str) -> tuple[str, ...]:
    """``"mean,diff,probe:runs/p"`` → its names, checked (a probe run directory must exist)."""
    items = [x.strip() for x in spec.split(",") if x.strip()]
    if not items:
        raise SpecError(f"--vectors: give at least one of {SYNTAX}")
    for x in items:
        if x in NAMED_VECTORS:
            continue
        rv = RunVector.parse(x)
        if rv is None:
            raise SpecError(f"--vectors: {x!r} is not one of {SYNTAX}")
        _check_run_dir(x, rv)
    if len(set(items)) != len(items):
        raise SpecError(f"--vectors: {spec!r} repeats a vector")
    return tuple(items)


def check_run_vectors(names: tuple[str, ...], steered: str, d_model: int, layers: tuple[int, ...], a: str,
                      b: str | None) -> None:
    """Refuse, before anything runs, a probe-run direction that cannot steer model ``steered`` (of width
    ``d_model``) at ``layers``: the run lacks the model, one of the layers or the classes A and B, or its model
    has another width (one error naming the option and the fix)."""
    for name in names:
        rv = RunVector.parse(name)
        if rv is None:
            continue
        if b is None:
            raise SpecError(f"--vectors {name}: the direction separates subtask {a!r} from the task's other subtask, "
                            "and this task has none; use a task with two subtasks or --vectors mean")
        probed = rv.layers(steered, f"--vectors {name}")
        missing = [layer for layer in layers if layer not in probed]
        if missing:
            raise SpecError(f"--layers: {name} has no direction of model {rv.slug(steered)!r} at layer "
                            f"{', '.join(map(str, missing))} (probed layers: {', '.join(map(str, probed))}); give "
                            f"--layers {','.join(map(str, probed))}, or rerun `ivlens probe` with --layers all")
        v = rv.direction(steered, layers[0], a, b, f"--vectors {name}")  # the classes and the weights
        if v.shape != (d_model,):
            raise SpecError(f"--vectors {name}: the direction of model {rv.slug(steered)!r} has {v.size} numbers and "
                            f"model {steered!r} a d_model of {d_model}; pick a probed model of the same width with "
                            "@MODEL")


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


def iv_vector(name: str, X: np.ndarray, is_a: np.ndarray, is_b: np.ndarray) -> np.ndarray:
    """``mean`` (A's mean IV) or ``diff`` (A − B) of one layer's IVs ``X: [n, d_model]``."""
    mean_a, mean_b, _ = class_means(X, is_a, is_b)
    v = mean_a if name == "mean" else mean_a - mean_b
    if not np.isfinite(v).all():
        raise SpecError(f"--vectors: {name} needs IVs of the task's other subtask, and there are none; "
                        "use a task with two subtasks or --vectors mean")
    return v


def run_vectors(name: str, steered: str, n_layers: int, a: str, b: str) -> list[np.ndarray | None]:
    """The probe-run direction ``name`` for model ``steered`` at every layer (``None`` where it was not probed)."""
    rv = RunVector.parse(name)
    option = f"--vectors {name}"
    probed = set(rv.layers(steered, option))
    return [rv.direction(steered, layer, a, b, option) if layer in probed else None for layer in range(n_layers)]


def directions(names: tuple[str, ...], layers_x: list[np.ndarray], is_a: np.ndarray, is_b: np.ndarray,
               from_runs: dict[str, list[np.ndarray | None]]) -> Directions:
    """Unit directions.

    Args:
        names: the vectors (``mean``, ``diff``, ``probe:...``, ``means:...``).
        layers_x: the task's IVs of every layer, ``[n, d_model]`` each (``mean``, ``diff`` and the scale).
        is_a, is_b: ``[n]`` masks of subtask A's and B's rows.
        from_runs: per probe-run vector, its raw direction ``[d_model]`` at every layer (:func:`run_vectors`;
            ``None`` where the run did not probe the layer: a zero direction of NaN norm, never steered).
    """
    n_layers = len(layers_x)
    d_model = layers_x[0].shape[1]
    units, norms = [], []
    for name in names:
        per_layer, raw = [], []
        for layer in range(n_layers):
            v = from_runs[name][layer] if name in from_runs else iv_vector(name, layers_x[layer], is_a, is_b)
            if v is None:
                per_layer.append(np.zeros(d_model))
                raw.append(float("nan"))
                continue
            n = float(np.linalg.norm(v))
            per_layer.append(v / n if n > 0 else v)
            raw.append(n)
        units.append(np.stack(per_layer))
        norms.append(raw)
    scale = [class_means(layers_x[layer], is_a, is_b)[2] for layer in range(n_layers)]
    return Directions(tuple(names), torch.tensor(np.stack(units), dtype=torch.float32),
                      torch.tensor(scale, dtype=torch.float32), torch.tensor(norms, dtype=torch.float32))
