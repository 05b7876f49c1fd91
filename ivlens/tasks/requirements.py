"""What an analysis needs from a task, checked before any work.

Probes classify instructions by subtask, so every subtask needs several phrasings of its instruction (the
spec's ``rephrasings`` field); contrastive patching swaps one subtask's instruction for the other's, so the
task needs exactly two subtasks (the spec's ``subtasks``). Call these at the entry of an analysis: the
error then names the spec field that provides what is missing, instead of surfacing from deep inside the
cross-validation or the patching loop.

>>> require_rephrasings(["adjectives", "animals"], n=2, analysis="probing")   # built-ins: 200 each
>>> require_contrastive(load_task("adjectives"), analysis="--mode contrastive")
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .registry import CONTRASTIVE, load_task
from .schema import Task, TaskError

TaskLike = Task | str | Path


def _as_task(t: TaskLike) -> Task:
    return t if isinstance(t, Task) else load_task(t)


def _where(task: Task) -> str | None:
    """The spec to name in a message (a built-in task has none: its name is in the message)."""
    return task.spec or None


def require_rephrasings(tasks: TaskLike | Iterable[TaskLike], n: int = 2, analysis: str = "probing") -> None:
    """Raise :class:`TaskError` unless every subtask of every task has at least ``n`` rephrasings.

    Args:
        tasks: one task or several (built-in names, YAML spec paths or loaded :class:`Task` s).
        n: the fewest rephrasings per subtask the analysis can work with.
        analysis: what needs them, for the message (``"probing"``, ``"ivlens probe"``).
    """
    many = [tasks] if isinstance(tasks, Task | str | Path) else list(tasks)
    for task in map(_as_task, many):
        short = {name: len(st.rephrasings) for name, st in task.subtasks.items() if len(st.rephrasings) < n}
        if not short:
            continue
        counts = ", ".join(f"{name} has {k}" for name, k in short.items())
        fields = ", ".join(f"`subtasks.{name}.rephrasings`" for name in short)
        raise TaskError(
            f"{analysis} needs at least {n} rephrasings of each subtask's instruction; task {task.name!r}: {counts}",
            file=_where(task),
            fix=f"give each of these subtasks an `index,instruction` CSV with {n} or more rows under {fields} "
                "in the spec")


def require_contrastive(task: TaskLike, analysis: str = "contrastive mode") -> Task:
    """Raise :class:`TaskError` unless ``task`` has exactly two subtasks (two answers to each query).

    Returns:
        the loaded task.
    """
    task = _as_task(task)
    if task.is_contrastive:
        return task
    names = ", ".join(task.subtasks) or "none"
    fix = ("list exactly two subtasks under `subtasks:` in the spec, each with its answer column in the data file"
           if task.spec else f"choose a contrastive task: {', '.join(CONTRASTIVE)}, or a spec with two `subtasks`")
    raise TaskError(f"{analysis} needs a task with two subtasks; task {task.name!r} has {len(task.subtasks)} "
                    f"({names})", file=_where(task), fix=fix)
