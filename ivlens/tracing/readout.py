"""Where a read-out direction comes from, and where it is read: ``ivlens trace --readout SOURCE --position P``.

A read-out traces ``y = w · resid_l[t]`` (:meth:`ivlens.tracing.surrogate.Target.readout`), the residual stream
after decoder block ``l`` at position ``t``: the state an instruction vector is read from. ``SOURCE`` says what
``w`` and ``l`` are (``RUN_DIR`` a probe run directory, ``LAYER`` a decoder layer, negative from the end; an
optional ``@MODEL`` picks the probed model whose direction to use, by default the traced model's own)::

    probe:RUN_DIR:LAYER[:CLASS][@MODEL]   the probe's class direction coef[CLASS] (ivlens.probing.weights): y is the
                                          class's pre-activation logit minus the probe's intercept
    means:RUN_DIR:LAYER[:A-B][@MODEL]     mean IV of class A minus mean IV of class B (the stored IVs of the run)
    lda:RUN_DIR:LAYER[@MODEL]             the first LDA discriminant (as in the probe run's scatter)
    vector:FILE:LAYER                     a user's vector: FILE.npy (np.load, allow_pickle=False), or
                                          FILE.safetensors holding one tensor (FILE.safetensors#KEY for one of many)

Without ``CLASS`` (``A-B``) the traced prompt's subtask is the class (minus the task's other subtask).
``--position`` is ``t_inst`` (the instruction's last token, :func:`ivlens.tasks.prompts.find_t_inst`), ``last``,
or an index (negative from the end). The traced prompt is cut after ``t``: causal attention lets no later token
write into ``resid_l[t]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ivlens.errors import IvlensError
from ivlens.runs import slug

KINDS = ("probe", "means", "lda", "vector")
SYNTAX = ("probe:RUN_DIR:LAYER[:CLASS], means:RUN_DIR:LAYER[:A-B], lda:RUN_DIR:LAYER (optionally @MODEL at the "
          "end), or vector:FILE:LAYER with FILE .npy or .safetensors")
_POSITION = re.compile(r"^(t_inst|last|-?\d+)$")


class ReadoutError(IvlensError, ValueError):
    """A read-out that cannot be resolved; the message names the option and the fix."""


@dataclass(frozen=True)
class ReadoutSource:
    """A parsed ``--readout``: ``kind`` (one of :data:`KINDS`), ``path`` (run directory or file), ``layer`` (as
    given: may be negative), ``cls`` (a class, or ``A-B`` for means; ``None``: the traced subtask), ``model``
    (``@MODEL``), ``key`` (a safetensors tensor name)."""

    kind: str
    path: str
    layer: int
    cls: str | None = None
    model: str | None = None
    key: str | None = None


def _int(text: str) -> int | None:
    return int(text) if re.fullmatch(r"-?\d+", text) else None


def parse_readout(text: str) -> ReadoutSource:
    """Parse ``--readout`` (syntax in the module docstring); raises :class:`ReadoutError` (no file is read)."""
    kind, sep, body = text.partition(":")
    if kind not in KINDS or not sep or not body:
        raise ReadoutError(f"not a read-out; give {SYNTAX}")
    model = None
    head, _, last = body.rpartition(":")
    if kind != "vector" and "@" in last:
        last, model = last.split("@", 1)
        if not model:
            raise ReadoutError("@MODEL is empty; give a probed model's name after @, or leave @ out")
    cls = None
    if kind in ("probe", "means") and _int(last) is None and head:  # ...:LAYER:CLASS
        cls = last
        head, _, last = head.rpartition(":")
    layer = _int(last)
    if layer is None or not head:
        raise ReadoutError(f"no LAYER in it; give {SYNTAX}")
    key = None
    if kind == "vector":
        if "#" in head:
            head, key = head.rsplit("#", 1)
        if not head.endswith((".npy", ".safetensors")):
            raise ReadoutError("vector:FILE:LAYER reads a .npy or .safetensors file (never a pickle)")
    if kind == "means" and cls is not None and "-" not in cls:
        raise ReadoutError(f"means:...:{cls}: give two classes as A-B (mean IV of A minus mean IV of B)")
    return ReadoutSource(kind, head, layer, cls, model, key)


def check_position(position: str) -> str:
    """``t_inst``, ``last`` or an integer, else :class:`ReadoutError`."""
    if not _POSITION.match(position):
        raise ReadoutError("give t_inst (the instruction's last token), last, or a token index (negative from the end)")
    return position


def resolve_position(position: str, n_tokens: int, t_inst: int | None) -> int:
    """The token index ``--position`` names in a prompt of ``n_tokens`` tokens whose T_inst is ``t_inst``."""
    check_position(position)
    if position == "last":
        return n_tokens - 1
    if position == "t_inst":
        if t_inst is None:
            raise ReadoutError("--position t_inst: this prompt has no instruction; trace a task prompt (--task, "
                               "--sample) or give --position last or an index")
        return t_inst
    p = int(position)
    q = p + n_tokens if p < 0 else p
    if not 0 <= q < n_tokens:
        raise ReadoutError(f"--position {p} is past the prompt of {n_tokens} tokens: give 0..{n_tokens - 1} "
                           f"(or -{n_tokens}..-1 from the end), t_inst or last")
    return q


@dataclass(frozen=True)
class Direction:
    """A resolved read-out: ``vector: [d_model]`` (float64), the decoder ``layer`` (≥ 0), a ``name`` for the output
    and ``info`` (source, intercept, probe, classes) for ``<model>.readout.json``."""

    vector: Tensor
    layer: int
    name: str
    info: dict = field(default_factory=dict)


def _run_dir(src: ReadoutSource, base: Path | None) -> Path:
    path = Path(src.path)
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.is_dir():
        raise ReadoutError(f"--readout {src.kind}:{src.path}:...: no directory {path}; give the run directory of an "
                           "`ivlens probe` run")
    return path


def _layer(src: ReadoutSource, n_layers: int) -> int:
    layer = src.layer + n_layers if src.layer < 0 else src.layer
    if not 0 <= layer < n_layers:
        raise ReadoutError(f"--readout: layer {src.layer} is outside a model of {n_layers} layers (0..{n_layers - 1}, "
                           f"or -{n_layers}..-1 from the end)")
    return layer


def _split_pair(pair: str, known: list[str] | None) -> tuple[str, str]:
    """``A-B`` into its classes; with ``known`` class names, the split whose both sides are known."""
    if known:
        for i, ch in enumerate(pair):
            if ch == "-" and pair[:i] in known and pair[i + 1:] in known:
                return pair[:i], pair[i + 1:]
    a, _, b = pair.partition("-")
    return a, b


def _vector_file(src: ReadoutSource) -> np.ndarray:
    path = Path(src.path)
    if not path.is_file():
        raise ReadoutError(f"--readout vector:{src.path}:...: no file {path}")
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ReadoutError(f"--readout vector:{path}: not a plain .npy array ({e}); save it with "
                               "np.save(path, array) from a numeric array") from None
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    if src.key is not None:
        if src.key not in tensors:
            raise ReadoutError(f"--readout vector:{path}#{src.key}: no tensor {src.key!r} (has {', '.join(tensors)})")
        return tensors[src.key]
    if len(tensors) != 1:
        raise ReadoutError(f"--readout vector:{path}: {len(tensors)} tensors ({', '.join(tensors)}); name one as "
                           f"vector:{path}#KEY:LAYER")
    return next(iter(tensors.values()))


def load_direction(src: ReadoutSource, *, model: str, d_model: int, n_layers: int, subtask: str | None = None,
                   other: str | None = None, base: Path | None = None) -> Direction:
    """Resolve ``src`` for the traced model ``model`` (its name; the probe run's model of that name unless
    ``@MODEL``): the vector ``[d_model]``, the layer, and what it is. ``subtask``/``other``: the traced prompt's
    subtask and the task's other one (the class, or ``A-B``, when the source names none); ``base``: the directory
    a relative ``RUN_DIR`` is read from (a study's directory), default the working directory."""
    from ivlens.probing.weights import class_mean_difference, iv_classes, lda_direction, probe_direction

    layer = _layer(src, n_layers)
    probed = slug(src.model or model)
    info: dict = {"kind": src.kind, "layer": layer, "intercept": 0.0}
    if src.kind == "vector":
        vec = _vector_file(src)
        info["file"] = str(src.path)
        name = f"vector {Path(src.path).name}" + (f"#{src.key}" if src.key else "")
    else:
        run = _run_dir(src, base)
        info.update(run=str(run), model=probed)
        if src.kind in ("probe", "lda"):
            cls = src.cls or subtask
            if src.kind == "probe" and cls is None:
                raise ReadoutError("--readout probe:RUN_DIR:LAYER names no class and the prompt has no subtask; "
                                   "give probe:RUN_DIR:LAYER:CLASS")
            d = (probe_direction(run, probed, layer, cls) if src.kind == "probe" else lda_direction(run, probed, layer))
            vec, name = d.vector, d.description
            info.update(probe=d.probe, classes=list(d.classes), intercept=d.intercept, cls=cls)
        else:
            pair = src.cls
            if pair is None:
                if subtask is None or other is None:
                    raise ReadoutError("--readout means:RUN_DIR:LAYER names no classes and the prompt's task has no "
                                       "two subtasks; give means:RUN_DIR:LAYER:A-B")
                a, b = subtask, other
            else:
                a, b = _split_pair(pair, iv_classes(run, probed))
            d = class_mean_difference(run, probed, layer, a, b)
            vec, name = d.vector, d.description
            info.update(classes=[a, b])
    vec = np.asarray(vec, dtype=np.float64)
    if vec.ndim == 2 and 1 in vec.shape:
        vec = vec.reshape(-1)
    if vec.shape != (d_model,):
        raise ReadoutError(f"--readout: the direction has shape {list(vec.shape)}; the model's d_model is {d_model}: "
                           f"give a vector of {d_model} numbers")
    if not np.isfinite(vec).all():
        raise ReadoutError("--readout: the direction has non-finite entries")
    return Direction(torch.from_numpy(vec), layer, name, info)
