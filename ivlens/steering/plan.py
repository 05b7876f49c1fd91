"""Steering plans: which vectors, at which scales, layers and positions are added (pure data, no model).

A row adds ``α · s_l · v̂_l`` (:mod:`ivlens.steering.vectors`) after decoder layer ``l`` of the query-only prompt
at one *position spec*. Positions are patching's (:mod:`ivlens.patching.plan`: ``first``, ``last``, ``bos`` and
token indices, resolved by :func:`~ivlens.patching.plan.resolve_position`), plus ``all``: every token of the
prompt. ``first`` is where patching writes the IV into the query-only prompt, the place of T_inst in a prompt that
has no instruction; ``t_inst`` itself needs an instruction and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ivlens.patching.plan import NAMED_POSITIONS, PlanError, parse_positions, resolve_position

ALL = "all"
STEER_POSITIONS = tuple(p for p in NAMED_POSITIONS if p != "t_inst") + (ALL,)


def parse_steer_positions(spec: str) -> tuple[str | int, ...]:
    """``"first,last,all"`` → position specs (patching's, plus ``all``).

    >>> parse_steer_positions("first,all,-2")
    ('first', 'all', -2)
    """
    items = [x.strip() for x in spec.split(",") if x.strip()]
    if "t_inst" in items:
        raise PlanError("--positions: t_inst needs an instruction, and steering edits the query-only prompt; use "
                        "first (where patching writes the IV, T_inst's place), last or all")
    rest = [x for x in items if x != ALL]
    try:
        parsed = list(parse_positions(rest)) if rest else []
    except PlanError as e:
        raise PlanError(f"--positions: {e}; steering also takes 'all' (every token)") from None
    if not items:
        raise PlanError("--positions: give at least one of first, last, all, bos or a token index")
    if items.count(ALL) > 1:
        raise PlanError(f"--positions: {spec!r} repeats a position")
    it = iter(parsed)
    return tuple(ALL if x == ALL else next(it) for x in items)


def resolve_span(position: str | int, n_tokens: int, *, has_bos: bool) -> tuple[int, int]:
    """``(token, span)``: the first edited token index and the number of edited tokens of a position spec in a
    prompt of ``n_tokens`` tokens (``all``: ``(0, n_tokens)``; any other: one token)."""
    if position == ALL:
        return 0, n_tokens
    return resolve_position(position, n_tokens, has_bos=has_bos), 1


@dataclass(frozen=True)
class SteerPlan:
    """Vectors × α × layers × positions. ``rows`` is the row order of the result table, per sample."""

    vectors: tuple[str, ...]
    alphas: tuple[float, ...]
    layers: tuple[int, ...]
    positions: tuple[str | int, ...]

    @property
    def rows(self) -> tuple[tuple[int, int, int, str | int], ...]:
        """``(vector index, alpha index, layer, position)`` for every configuration, vector-major."""
        return tuple((v, a, layer, p) for v in range(len(self.vectors)) for a in range(len(self.alphas))
                     for layer in self.layers for p in self.positions)

    def to_dict(self) -> dict[str, Any]:
        return {"vectors": list(self.vectors), "alphas": list(self.alphas), "layers": list(self.layers),
                "positions": [str(p) for p in self.positions]}
