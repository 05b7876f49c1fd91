"""Patch plans: which layer sets are patched, at which target positions.

A :class:`PatchPlan` is data (a frozen dataclass with :meth:`PatchPlan.to_dict`), so every run records exactly
what it patched. Its rows are the product *layer sets × positions*; each row patches the instruction vector
(IV) of every layer in its set into the target at the same layers, at one target position.

Layer-set specs (``layers=``):

- ``single``: every layer ``(l,)``;
- ``pairs``: every pair ``(a, b)``, ``a < b``, plus the singles (so interactions can be computed);
- ``triplets``: every triplet, plus the pairs and singles;
- ``N-sets`` (``4-sets``, ``5-sets``, …): every set of up to ``N`` layers (``1-sets``, ``2-sets``, ``3-sets`` are
  ``single``, ``pairs``, ``triplets``); with ``--screen K`` only the singles and the top ``K`` of each size by
  the linear estimate run exactly (:mod:`ivlens.patching.screen`), which makes sizes past triplets affordable;
- an explicit list ``"3,5,7;2,4"``: those sets (``;`` separates sets, ``,`` layers), plus the singles of their
  layers (needed for the additive prediction of :mod:`ivlens.patching.interactions`).

Position specs (``positions=``, comma-separated): ``bos`` (index 0 of a target that starts with the tokenizer's
BOS token; an error for one that does not), ``first`` (the first token of the target prompt after a leading
BOS, if it has one; in chat format that is the template's first token), ``last``, ``t_inst`` (the target's last
instruction token; contrastive mode), or an integer index into the target prompt's tokens (negative counts from
the end).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

from ivlens.errors import IvlensError

LayerSet = tuple[int, ...]
NAMED_LAYER_SPECS = ("single", "pairs", "triplets")
NAMED_POSITIONS = ("bos", "first", "last", "t_inst")


class PlanError(IvlensError, ValueError):
    """A layer or position spec is invalid; the message names the valid choices."""


def max_set_size(spec: str) -> int | None:
    """The largest set size of a named layer spec (``single`` 1, ``pairs`` 2, ``triplets`` 3, ``N-sets`` N), or
    ``None`` for an explicit list.

    >>> max_set_size("4-sets"), max_set_size("pairs"), max_set_size("3,5")
    (4, 2, None)
    """
    spec = spec.strip()
    if spec in NAMED_LAYER_SPECS:
        return NAMED_LAYER_SPECS.index(spec) + 1
    head, sep, tail = spec.partition("-")
    if sep and tail == "sets":
        if not head.isdigit() or int(head) < 1:
            raise PlanError(f"layer spec {spec!r}: N-sets needs a whole number N ≥ 1, e.g. 4-sets")
        return int(head)
    return None


def parse_layer_sets(spec: str | list[LayerSet] | tuple[LayerSet, ...], n_layers: int) -> tuple[LayerSet, ...]:
    """Layer sets for ``spec`` on a model with ``n_layers`` layers, sorted by size then lexicographically.

    >>> parse_layer_sets("pairs", 3)
    ((0,), (1,), (2,), (0, 1), (0, 2), (1, 2))
    >>> parse_layer_sets("3,5;1", 6)
    ((1,), (3,), (5,), (3, 5))
    >>> len(parse_layer_sets("4-sets", 6))  # 6 + 15 + 20 + 15
    56
    """
    if n_layers < 1:
        raise PlanError(f"a model needs at least one layer, got n_layers={n_layers}")
    max_size = max_set_size(spec) if isinstance(spec, str) else None
    if max_size is not None:
        if max_size > n_layers:
            raise PlanError(f"layer spec {spec!r}: sets of {max_size} layers need at least {max_size} layers; this "
                            f"model has {n_layers}")
        sets = [c for k in range(1, max_size + 1) for c in itertools.combinations(range(n_layers), k)]
        return tuple(sets)
    if isinstance(spec, str):
        raw: list[list[str]] = [[x.strip() for x in part.split(",")] for part in spec.split(";") if part.strip()]
        if not raw:
            raise PlanError(f"empty layer spec {spec!r}; use single, pairs, triplets, N-sets or a list like "
                            "'3,5,7;2,4'")
        explicit = []
        for part in raw:
            try:
                explicit.append(tuple(int(x) for x in part))
            except ValueError:
                raise PlanError(f"cannot read layer set {','.join(part)!r} in {spec!r}: use single, pairs, "
                                "triplets, N-sets (e.g. 4-sets), or integers like '3,5,7;2,4'") from None
    else:
        explicit = [tuple(int(x) for x in s) for s in spec]
    out: set[LayerSet] = set()
    for s in explicit:
        if not s:
            raise PlanError("an empty layer set patches nothing")
        for layer in s:
            if not 0 <= layer < n_layers:
                raise PlanError(f"layer {layer} is out of range: this model has {n_layers} layers "
                                f"(valid indices 0 to {n_layers - 1})")
        if len(set(s)) != len(s):
            raise PlanError(f"layer set {s} repeats a layer")
        canon = tuple(sorted(s))
        out.add(canon)
        out.update((layer,) for layer in canon)  # singles, for the additive prediction
    return tuple(sorted(out, key=lambda s: (len(s), s)))


def parse_positions(spec: str | list | tuple) -> tuple[str | int, ...]:
    """Position specs from ``"first,last"`` (or a list); integers stay integers.

    >>> parse_positions("first,last,-2")
    ('first', 'last', -2)
    """
    items = [x.strip() for x in spec.split(",")] if isinstance(spec, str) else list(spec)
    out: list[str | int] = []
    for x in items:
        if isinstance(x, int) or (isinstance(x, str) and x.lstrip("-").isdigit()):
            out.append(int(x))
        elif x in NAMED_POSITIONS:
            out.append(x)
        else:
            raise PlanError(f"unknown position {x!r}; use bos, first, last, t_inst or a token index such as 3 or -2")
    if not out:
        raise PlanError("no positions given; use e.g. 'first,last'")
    if len(set(out)) != len(out):
        raise PlanError(f"position list {spec!r} repeats a position")
    return tuple(out)


def resolve_position(position: str | int, n_tokens: int, *, t_inst: int | None = None,
                     has_bos: bool = False) -> int:
    """Token index (0-based, into the target prompt's ``n_tokens`` tokens) of a position spec."""
    if position == "first":
        return 1 if has_bos and n_tokens > 1 else 0
    if position == "bos":
        if not has_bos:
            raise PlanError("position 'bos' needs a target prompt that starts with the tokenizer's BOS token; "
                            "this one does not: use first or a token index")
        return 0
    if position == "last":
        return n_tokens - 1
    if position == "t_inst":
        if t_inst is None:
            raise PlanError("position 't_inst' needs a target prompt with an instruction (contrastive mode)")
        return t_inst
    idx = int(position)
    if not -n_tokens <= idx < n_tokens:
        raise PlanError(f"position {idx} is out of range for a target prompt of {n_tokens} tokens "
                        f"(valid {-n_tokens} to {n_tokens - 1})")
    return idx % n_tokens


def layer_set_label(layers: LayerSet) -> str:
    """``(3, 5)`` → ``"3,5"`` (the ``layers`` column of result tables)."""
    return ",".join(str(x) for x in layers)


def parse_layer_set_label(label: str) -> LayerSet:
    return tuple(int(x) for x in label.split(","))


@dataclass(frozen=True)
class PatchRow:
    """One configuration: patch the IVs of ``layers`` at target position ``position``."""

    layers: LayerSet
    position: str | int

    @property
    def first_layer(self) -> int:
        return self.layers[0]


@dataclass(frozen=True)
class PatchPlan:
    """Layer sets × positions for a model with ``n_layers`` layers. Build with :meth:`build`.

    >>> plan = PatchPlan.build("pairs", "first,last", n_layers=6)
    >>> len(plan.layer_sets), len(plan.rows)
    (21, 42)
    """

    n_layers: int
    layer_spec: str
    layer_sets: tuple[LayerSet, ...]
    positions: tuple[str | int, ...]

    @classmethod
    def build(cls, layers: str | list, positions: str | list, n_layers: int) -> PatchPlan:
        spec = layers if isinstance(layers, str) else ";".join(layer_set_label(tuple(s)) for s in layers)
        return cls(n_layers, spec, parse_layer_sets(layers, n_layers), parse_positions(positions))

    def with_layer_sets(self, layer_sets: tuple[LayerSet, ...]) -> PatchPlan:
        """This plan restricted to ``layer_sets`` (e.g. the sets a screen keeps; :mod:`ivlens.patching.screen`)."""
        return dataclasses.replace(self, layer_sets=tuple(sorted(layer_sets, key=lambda s: (len(s), s))))

    @property
    def rows(self) -> tuple[PatchRow, ...]:
        """All configurations, position-major (every layer set at the first position, then the next)."""
        return tuple(PatchRow(s, p) for p in self.positions for s in self.layer_sets)

    def to_dict(self) -> dict[str, Any]:
        return {"n_layers": self.n_layers, "layer_spec": self.layer_spec,
                "layer_sets": [layer_set_label(s) for s in self.layer_sets], "positions": list(self.positions)}
