"""Typed task model.

A :class:`Task` is a set of queries (:class:`Sample`) and one or more :class:`Subtask` s, each with its
instruction, rephrasings of that instruction and a label space. Contrastive tasks (the paper's
``adjectives`` and ``animals``) have two subtasks whose answers to the same query differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ivlens.errors import IvlensError


class TaskError(IvlensError, ValueError):
    """A task file or spec is invalid, or a task lacks what an analysis needs.

    The message reads ``<file>, row <n>: <problem>; <fix>`` (``line <n>`` for JSONL and YAML, where rows are
    lines). The parts stay available as attributes for callers that format errors themselves; a bare
    message (``TaskError("...")``) is kept as it is.
    """

    def __init__(self, problem: str, *, file: str | Path | None = None, row: int | None = None,
                 line: int | None = None, fix: str | None = None):
        self.problem = problem
        self.file = str(file) if file is not None else None
        self.row = row
        self.line = line
        self.fix = fix
        where = self.file or ""
        if where and row is not None:
            where += f", row {row}"
        elif where and line is not None:
            where += f", line {line}"
        message = f"{where}: {problem}" if where else problem
        super().__init__(f"{message}; {fix}" if fix else message)


@dataclass(frozen=True)
class Subtask:
    """One instruction-following subtask.

    ``label_space`` is the set of answers counted as following *this* instruction (the paper's IA):
    explicit in the spec, else every answer of this subtask in the task file.
    """

    name: str
    instruction: str
    rephrasings: tuple[str, ...] = ()
    label_space: tuple[str, ...] = ()
    rephrasings_file: str | None = None


@dataclass(frozen=True)
class Sample:
    """One query with its accepted answers per subtask.

    A query listed twice in a file (the paper's ``adjectives.csv`` has ``short``: long / tall) becomes one
    sample with several accepted answers; ``rows`` are its data-row numbers (1-based, header excluded).
    """

    index: int
    query: str
    answers: dict[str, tuple[str, ...]]
    rows: tuple[int, ...] = ()

    def answer(self, subtask: str) -> str:
        """The primary (first listed) answer of ``subtask``: the one whose first token is scored."""
        return self.answers[subtask][0]


@dataclass(frozen=True)
class Task:
    name: str
    field: str
    subtasks: dict[str, Subtask]
    samples: tuple[Sample, ...]
    source: str = ""
    description: str = ""
    attribution: str = ""
    warnings: tuple[str, ...] = field(default=(), compare=False)
    spec: str = ""  # the YAML spec of a user task ("" for built-in tasks)

    @property
    def subtask_names(self) -> list[str]:
        return list(self.subtasks)

    @property
    def is_contrastive(self) -> bool:
        return len(self.subtasks) == 2

    def other(self, subtask: str) -> str:
        """The other subtask of a contrastive task."""
        if not self.is_contrastive:
            raise TaskError(f"task {self.name!r} has {len(self.subtasks)} subtask(s); 'other' needs exactly two")
        a, b = self.subtask_names
        return b if subtask == a else a

    def subtask(self, name: str | None) -> Subtask:
        if name is None:
            return next(iter(self.subtasks.values()))
        if name not in self.subtasks:
            raise TaskError(f"task {self.name!r} has no subtask {name!r}; choose from {', '.join(self.subtasks)}")
        return self.subtasks[name]

    def source_path(self) -> Path | None:
        return Path(self.source) if self.source else None
