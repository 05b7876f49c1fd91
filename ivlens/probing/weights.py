"""The fitted probes of a probe run, kept so that their directions can be traced (``ivlens trace --readout``) and
steered along (``ivlens steer --vectors probe:RUN_DIR``); this module also reads every direction back.

For every model, ``<run>/probe_weights/<model>.safetensors`` (float64 tensors, no pickle) and ``<model>.json``
(what the tensors are)::

    probe/<probe>/<layer>/coef       [class, d_model]   the logistic probe fitted on every row of <probe>
    probe/<probe>/<layer>/intercept  [class]
    probe/<probe>/<layer>/mean       [d_model]          the standardisation the probe applied (μ, σ)
    probe/<probe>/<layer>/scale      [d_model]
    lda/<layer>/axis                 [d_model]          the first LDA discriminant of all classes (as in the scatter)

**Standardisation is folded in.** The probe (:class:`~ivlens.probing.probes.LogisticProbe`) standardises each
feature on its training rows, ``x_s = (x − μ) / σ``, and fits ``W_s, b_s``. The saved ``coef = W_s / σ`` and
``intercept = b_s − coef · μ`` act on the raw IV: ``coef[c] · x + intercept[c] = W_s[c] · x_s + b_s[c]``, class
``c``'s pre-activation logit, exactly. Tracing the direction ``coef[c]`` therefore decomposes that logit minus the
constant ``intercept[c]``. The CV folds' probes (which measured the accuracy) are not kept; this one is fitted on
every row, the probe one would deploy. The LDA axis is affine in the IV too (:func:`~ivlens.probing.probes.lda_project`):
``lda_x = axis · x + const``.

**Directions read back** (:class:`ProbeDirection`, each for one model and layer; errors name the option and what
the run has): :func:`probe_direction` (``coef[c]``), :func:`probe_contrast` (``coef[a] − coef[b]``: the direction
raising ``a``'s logit against ``b``'s), :func:`lda_direction`, and :func:`class_mean_difference` (mean IV of ``a``
minus mean IV of ``b``, from the run's stored IVs ``ivs/<model>/``, no probe involved).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from ivlens.errors import IvlensError
from ivlens.runs import atomic_write_json

from .probes import LogisticProbe

SCHEMA = "ivlens.probe_weights/1"
DIRECTORY = "probe_weights"


class ProbeWeightsError(IvlensError, ValueError):
    """A probe run's saved weights cannot give the asked direction; the message names what exists."""


@dataclass
class ProbeWeights:
    """One model's fitted probes and LDA axes, gathered layer by layer, then :meth:`write`-n.

    ``probes: {probe: {"target": str, "classes": [str]}}``; ``tensors``: the safetensors entries (module docstring).
    """

    model: str
    d_model: int
    probes: dict[str, dict] = field(default_factory=dict)
    lda_classes: list[str] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    def add_probe(self, probe: str, target: str, classes: list[str], layer: int, fitted: LogisticProbe) -> None:
        """Keep ``fitted`` (``coef_: [class, d_model]`` in raw IV units) as ``probe`` at ``layer``."""
        self.probes.setdefault(probe, {"target": target, "classes": list(classes)})
        key = f"probe/{probe}/{layer}"
        self.tensors[f"{key}/coef"] = np.ascontiguousarray(fitted.coef_, dtype=np.float64)
        self.tensors[f"{key}/intercept"] = np.ascontiguousarray(fitted.intercept_, dtype=np.float64)
        self.tensors[f"{key}/mean"] = np.ascontiguousarray(fitted.mean_, dtype=np.float64)
        self.tensors[f"{key}/scale"] = np.ascontiguousarray(fitted.scale_, dtype=np.float64)
        if layer not in self.layers:
            self.layers.append(layer)

    def add_lda(self, classes: list[str], layer: int, axis: np.ndarray) -> None:
        """Keep the first LDA discriminant ``axis: [d_model]`` of ``layer``."""
        self.lda_classes = list(classes)
        self.tensors[f"lda/{layer}/axis"] = np.ascontiguousarray(axis, dtype=np.float64)

    def write(self, run_path: str | Path, slug: str) -> Path:
        """Write ``probe_weights/<slug>.safetensors`` and ``.json`` under ``run_path``; returns the tensor file."""
        out = Path(run_path) / DIRECTORY
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".{slug}.safetensors.tmp"
        save_file(self.tensors, str(tmp))
        tmp.replace(out / f"{slug}.safetensors")
        atomic_write_json(out / f"{slug}.json", {
            "schema": SCHEMA, "model": self.model, "d_model": self.d_model, "layers": sorted(self.layers),
            "probes": self.probes, "lda_classes": self.lda_classes,
            "definition": "coef[c] · x + intercept[c] is class c's pre-activation logit on the raw IV x "
                          "(the standardisation mean/scale folded in: coef = W_s / scale, intercept = b_s − coef · mean)"},
            indent=1)
        return out / f"{slug}.safetensors"


@dataclass(frozen=True)
class ProbeDirection:
    """A direction read back from a probe run: ``vector: [d_model]`` (float64), the constant the read-out
    leaves out (``intercept``: the probe's pre-activation logit is ``vector · x + intercept``; 0 for an LDA axis),
    and what it is."""

    vector: np.ndarray
    intercept: float
    probe: str
    classes: tuple[str, ...]
    description: str


def saved_models(run_dir: str | Path) -> list[str]:
    """The model slugs whose weights a probe run saved."""
    return sorted(p.stem for p in (Path(run_dir) / DIRECTORY).glob("*.json"))


def _meta(run_dir: str | Path, slug: str, option: str) -> dict:
    base = Path(run_dir) / DIRECTORY
    if not base.is_dir():
        raise ProbeWeightsError(f"{option}: {run_dir} holds no probe_weights/ (a probe run made by an older ivlens, "
                                "or not a probe run): run `ivlens probe` again with this version")
    if not (base / f"{slug}.json").is_file():
        raise ProbeWeightsError(f"{option}: {run_dir} has no probe of model {slug!r}; it has "
                                f"{', '.join(saved_models(run_dir)) or 'none'} (pick one with @MODEL, or probe this "
                                "model too)")
    return json.loads((base / f"{slug}.json").read_text())


def _open(run_dir: str | Path, slug: str, option: str) -> tuple[dict, dict[str, np.ndarray]]:
    meta = _meta(run_dir, slug, option)
    return meta, load_file(str(Path(run_dir) / DIRECTORY / f"{slug}.safetensors"))


def probed_layers(run_dir: str | Path, slug: str, option: str = "--readout") -> list[int]:
    """The layers at which the probe run fitted model ``slug``'s probes."""
    return list(_meta(run_dir, slug, option)["layers"])


def _check_layer(meta: dict, layer: int, run_dir, option: str) -> None:
    if layer not in meta["layers"]:
        raise ProbeWeightsError(f"{option}: layer {layer} was not probed in {run_dir} (probed: "
                                f"{', '.join(map(str, meta['layers']))})")


def _pick_probe(meta: dict, classes: tuple[str, ...], run_dir, option: str) -> str:
    """The most specific probe that knows every one of ``classes`` (fewest classes: ``task:adjectives`` before
    ``all``)."""
    known = sorted({c for p in meta["probes"].values() for c in p["classes"]})
    for cls in classes:
        if cls not in known:
            raise ProbeWeightsError(f"{option}: class {cls!r} is not a class of the probes in {run_dir} "
                                    f"(classes: {', '.join(known)})")
    having = [(len(p["classes"]), name) for name, p in meta["probes"].items() if set(classes) <= set(p["classes"])]
    if not having:
        raise ProbeWeightsError(f"{option}: no probe in {run_dir} has both classes {' and '.join(map(repr, classes))} "
                                f"(probes: {', '.join(sorted(meta['probes']))}); rerun `ivlens probe` with both "
                                "subtasks' tasks in --tasks")
    return min(having)[1]


def probe_direction(run_dir: str | Path, slug: str, layer: int, cls: str, option: str = "--readout"
                    ) -> ProbeDirection:
    """Class ``cls``'s direction ``coef[cls]`` of the probe at ``layer``, from the most specific probe that knows
    the class (fewest classes: ``task:adjectives`` before ``all``)."""
    meta, tensors = _open(run_dir, slug, option)
    _check_layer(meta, layer, run_dir, option)
    name = _pick_probe(meta, (cls,), run_dir, option)
    i = meta["probes"][name]["classes"].index(cls)
    key = f"probe/{name}/{layer}"
    return ProbeDirection(tensors[f"{key}/coef"][i], float(tensors[f"{key}/intercept"][i]), name,
                          tuple(meta["probes"][name]["classes"]),
                          f"probe {name!r} class {cls!r} at layer {layer} (logit = w · x + {float(tensors[f'{key}/intercept'][i]):.4g})")


def contrast_row(coef: np.ndarray, intercept: np.ndarray, classes: list[str], a: str, b: str
                 ) -> tuple[np.ndarray, float]:
    """``(w, c)`` with ``w · x + c`` = logit of ``a`` − logit of ``b`` (the A-vs-B margin) of a probe with
    ``coef: [class, d_model]``, ``intercept: [class]``.

    A multinomial probe (one row per class, as :class:`~ivlens.probing.probes.LogisticProbe` saves every probe,
    binary ones included) gives ``coef[a] − coef[b]``: with two classes that is the whole binary decision; with
    more, the direction along which ``a``'s logit rises fastest against ``b``'s (the other logits may move too). A binary
    probe saved with a single row (sklearn's convention: the logit of ``classes[1]`` against ``classes[0]``) gives
    that row, negated when ``a`` is ``classes[0]``.
    """
    i, j = classes.index(a), classes.index(b)
    if coef.shape[0] == len(classes):
        return coef[i] - coef[j], float(intercept[i] - intercept[j])
    if coef.shape[0] == 1 and len(classes) == 2:
        sign = 1.0 if i == 1 else -1.0
        return sign * coef[0], sign * float(intercept[0])
    raise ProbeWeightsError(f"a probe of {len(classes)} classes with {coef.shape[0]} coefficient rows: the saved "
                            "weights are inconsistent; rerun `ivlens probe`")


def probe_contrast(run_dir: str | Path, slug: str, layer: int, a: str, b: str, option: str = "--vectors"
                   ) -> ProbeDirection:
    """The direction raising class ``a``'s logit against ``b``'s, ``coef[a] − coef[b]`` (:func:`contrast_row`), of
    the most specific probe at ``layer`` that knows both; ``intercept`` is then the margin's constant."""
    meta, tensors = _open(run_dir, slug, option)
    _check_layer(meta, layer, run_dir, option)
    name = _pick_probe(meta, (a, b), run_dir, option)
    classes = meta["probes"][name]["classes"]
    key = f"probe/{name}/{layer}"
    w, c = contrast_row(tensors[f"{key}/coef"], tensors[f"{key}/intercept"], classes, a, b)
    return ProbeDirection(w, c, name, tuple(classes),
                          f"probe {name!r} class {a!r} − class {b!r} at layer {layer} (margin = w · x + {c:.4g})")


def lda_direction(run_dir: str | Path, slug: str, layer: int, option: str = "--readout") -> ProbeDirection:
    """The first LDA discriminant at ``layer`` (all classes)."""
    meta, tensors = _open(run_dir, slug, option)
    _check_layer(meta, layer, run_dir, option)
    if f"lda/{layer}/axis" not in tensors:
        raise ProbeWeightsError(f"{option}: {run_dir} has no LDA axis (a single class was probed)")
    return ProbeDirection(tensors[f"lda/{layer}/axis"], 0.0, "lda", tuple(meta["lda_classes"]),
                          f"first LDA axis of {', '.join(meta['lda_classes'])} at layer {layer}")


def _iv_dir(run_dir: str | Path, slug: str, option: str) -> Path:
    ivs = Path(run_dir) / "ivs" / slug
    if not (ivs / "meta.json").is_file():
        have = sorted(p.name for p in (Path(run_dir) / "ivs").glob("*")) if (Path(run_dir) / "ivs").is_dir() else []
        raise ProbeWeightsError(f"{option}: {run_dir} holds no IVs of model {slug!r} (models: "
                                f"{', '.join(have) or 'none'}; pick one with @MODEL)")
    return ivs


def iv_layers(run_dir: str | Path, slug: str, option: str = "--readout") -> list[int]:
    """The layers whose IVs the probe run stored for model ``slug``."""
    return list(json.loads((_iv_dir(run_dir, slug, option) / "meta.json").read_text())["layers"])


def iv_classes(run_dir: str | Path, slug: str, option: str = "--readout") -> list[str]:
    """The subtasks (classes) of model ``slug``'s stored IVs."""
    import pandas as pd

    return sorted(pd.read_parquet(_iv_dir(run_dir, slug, option) / "labels.parquet").subtask.unique())


def class_mean_difference(run_dir: str | Path, slug: str, layer: int, a: str, b: str, option: str = "--readout"
                          ) -> ProbeDirection:
    """Mean IV of class ``a`` minus that of ``b`` at ``layer`` (``vector: [d_model]``), from the run's stored IVs."""
    import pandas as pd

    from .collect import load_layer

    ivs = _iv_dir(run_dir, slug, option)
    labels = pd.read_parquet(ivs / "labels.parquet")
    classes = sorted(labels.subtask.unique())
    for c in (a, b):
        if c not in classes:
            raise ProbeWeightsError(f"{option}: class {c!r} is not in {run_dir} (classes: {', '.join(classes)})")
    layers = iv_layers(run_dir, slug, option)
    if layer not in layers:
        raise ProbeWeightsError(f"{option}: layer {layer} was not probed in {run_dir} (probed: "
                                f"{', '.join(map(str, layers))})")
    X = load_layer(ivs, layer)  # [n, d_model]
    sub = labels.subtask.to_numpy()
    v = X[sub == a].astype(np.float64).mean(0) - X[sub == b].astype(np.float64).mean(0)
    return ProbeDirection(v, 0.0, "means", (a, b), f"mean IV of {a!r} − mean IV of {b!r} at layer {layer}")
