"""THE seeded sample selector: every analysis (eval, patch, probe, trace) draws its queries here.

``select_samples(task, n, seed, queries)`` draws ``n`` samples without replacement with ``random.Random(seed)``
from the task's samples restricted to ``queries`` (a split), so the same ``--samples``, ``--seed`` and ``--split``
pick the same queries in every analysis. A split is made once, by :func:`fixed_query_split` (an organism's recipe
calls it and records the result in the organism's card), and read back by :func:`split_queries`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, get_args

from ivlens.providers import read_query_split

from .schema import Sample, Task, TaskError

Split = Literal["heldout", "train", "all"]
SPLITS: tuple[str, ...] = get_args(Split)
#: share of each rephrasing file (its first rows) that trains, the rest held out: the organisms' recipe records it
#: in their cards, and probes use it where no card says otherwise
TRAIN_REPHRASING_SHARE = 0.75


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
    if n is not None and n <= 0:
        raise TaskError(f"--samples must be positive (got {n})")
    if n is None or n >= len(pool):
        return pool
    picked = random.Random(seed).sample(range(len(pool)), n)
    return [pool[i] for i in sorted(picked)]


def sample_indices(task: Task, samples: int | Sequence[int] | None = None, seed: int = 0,
                   queries: Iterable[str] | None = None) -> list[int]:
    """Indices into ``task.samples``: an explicit list (checked against the task's size), or the draw of
    :func:`select_samples` for a count ``samples`` (``None``: all) within ``queries``."""
    if samples is None or isinstance(samples, int):
        return [s.index for s in select_samples(task, samples, seed, queries)]
    out = [int(i) for i in samples]
    bad = [i for i in out if not 0 <= i < len(task.samples)]
    if bad:
        raise TaskError(f"sample indices {bad} out of range: task {task.name!r} has {len(task.samples)} samples")
    return out


def fixed_query_split(task: Task, train_share: float, seed: int | str) -> dict[str, list[str]]:
    """THE train / held-out split of a task's queries: ``{"train": [...], "heldout": [...]}``, each in file order.

    The queries are shuffled with ``random.Random(f"{seed}:{task.name}")`` and the first ``round(train_share · n)``
    of them are the training ones, so the split depends on the task's name and ``seed`` only (not on a training
    seed) and every build that uses the same ``seed`` holds out the same queries."""
    queries = [s.query for s in task.samples]
    order = list(range(len(queries)))
    random.Random(f"{seed}:{task.name}").shuffle(order)
    n_train = round(train_share * len(queries))
    return {"train": [queries[i] for i in sorted(order[:n_train])],
            "heldout": [queries[i] for i in sorted(order[n_train:])]}


def training_rephrasings(n: int) -> int:
    """How many of a rephrasing file's ``n`` rows are training phrasings (its first ``round(0.75 · n)``, see
    :data:`TRAIN_REPHRASING_SHARE`); the rows after them are held out."""
    return round(TRAIN_REPHRASING_SHARE * n)


def split_queries(model_path: str | Path, model_name: str, task: Task, split: str) -> list[str] | None:
    """Queries of ``split`` (``train`` / ``heldout``) recorded in the card of the model organism at
    ``model_path``; None for ``all`` (every query of the task)."""
    if split == "all":
        return None
    if split not in SPLITS:
        raise TaskError(f"--split {split!r} is not one of {', '.join(SPLITS)}")
    try:
        splits = read_query_split(model_path)  # the card's format lives with the organism (ivlens.providers)
    except FileNotFoundError:
        raise TaskError(f"--split {split} needs a model organism (a card.json next to the weights); "
                        f"{model_name} has none: use --split all") from None
    if task.name not in splits:
        raise TaskError(f"the organism's card has no split for task {task.name!r} (it has {', '.join(splits)})")
    return list(splits[task.name][split])
