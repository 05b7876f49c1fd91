"""Shards: a deterministic share of a run's units of work, for SLURM array jobs and Ray tasks.

A sweep's units of work are numbered in the order the unsharded run does them (model by model; within a model,
chunk of samples by chunk for eval and patch, batch of instructions for probe's IV collection, sample for
``trace --compare``). Shard ``i/n`` computes the units whose number ``u`` has ``u mod n = i`` and writes them
as the unsharded run would (same keys, same files), then stops without finishing. :func:`ivlens.merge.merge_runs`
puts the shards' units into one run directory and finishes it, which gives exactly the unsharded run.
:class:`ivlens.units.UnitLoop` numbers the units, and skips another shard's.

>>> Shard.parse("1/3").owns(4)
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ivlens.errors import IvlensError

_SHARD = re.compile(r"^(\d+)/(\d+)$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``0 ≤ index < count``)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        m = _SHARD.match(text.strip())
        if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
            raise IvlensError(f"--shard {text!r}: give i/n with 0 ≤ i < n (e.g. 0/4 … 3/4)")
        return cls(int(m.group(1)), int(m.group(2)))

    def owns(self, unit: int) -> bool:
        """Whether unit of work number ``unit`` (0-based, in the unsharded run's order) is this shard's."""
        return unit % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def owner(shard: str | None):
    """``owns(unit) -> bool`` for a spec's ``shard`` field (every unit when it is ``None``)."""
    if shard is None:
        return lambda unit: True
    return Shard.parse(shard).owns
