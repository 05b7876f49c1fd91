"""Seeded, deterministic sample selection shared by every analysis."""

from __future__ import annotations

import random
from collections.abc import Iterable

from .schema import Sample, Task, TaskError


def select_samples(task: Task, n: int | None = None, seed: int = 0, queries: Iterable[str] | None = None
                   ) -> list[Sample]:
    """``n`` samples of ``task`` drawn without replacement with ``random.Random(seed)`` (all when ``n`` is
    None or at least the number available), restricted to ``queries`` if given; returned in file order so
    results read naturally and the same seed always gives the same list."""
    pool = list(task.samples)
    if queries is not None:
        wanted = set(queries)
        pool = [s for s in pool if s.query in wanted]
        if not pool:
            raise TaskError(f"task {task.name!r}: none of the requested queries is in the task file")
    if n is None or n >= len(pool):
        return pool
    if n <= 0:
        raise TaskError(f"--samples must be positive (got {n})")
    picked = random.Random(seed).sample(range(len(pool)), n)
    return [pool[i] for i in sorted(picked)]
