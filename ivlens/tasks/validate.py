"""Checks of a task against a tokenizer: can its contrasts and label spaces be measured by first token,
and do its prompts fit the model's context?

File-level problems (missing/extra columns, empty cells, a subtask without instruction) are raised as
:class:`~ivlens.tasks.schema.TaskError` when the task is loaded; the checks here need a tokenizer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

from .prompts import PromptFormat, build_prompt, instructed_prompt, label_token_ids
from .schema import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskIssue:
    severity: Literal["error", "warning"]
    file: str
    row: int | None  # 1-based data row (header excluded), None for task-wide issues
    message: str
    fix: str

    def __str__(self) -> str:
        where = f"{self.file}, row {self.row}" if self.row is not None else self.file
        return f"{self.severity}: {where}: {self.message}. Fix: {self.fix}"


def first_token_clashes(task: Task, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat = "raw",
                        subtasks: Sequence[str] | None = None) -> dict[str, list[tuple[str, list[str]]]]:
    """Per subtask, the groups of its label space that the tokenizer cannot tell apart by their first token:
    ``{subtask: [(first token as a string, [labels]), ...]}`` (subtasks without a clash are left out).

    One reference prompt per format suffices: a label's first token depends only on what precedes it at the end.
    """
    probe = build_prompt(tokenizer, None, "x", task.field, fmt)
    out: dict[str, list[tuple[str, list[str]]]] = {}
    for name in subtasks or task.subtask_names:
        by_token: dict[int, list[str]] = {}
        for label in task.subtask(name).label_space:
            by_token.setdefault(label_token_ids(tokenizer, probe, label)[0], []).append(label)
        clashes = [(tokenizer.convert_ids_to_tokens(t), ls) for t, ls in by_token.items() if len(ls) > 1]
        if clashes:
            out[name] = clashes
    return out


def warn_first_token_clashes(tokenizer: PreTrainedTokenizerBase, task: Task, subtasks: Sequence[str],
                             fmt: PromptFormat, score: str, seen: set[tuple[str, str]] | None = None) -> list[str]:
    """Log (and return) one warning per subtask whose labels share first tokens, when an analysis scores by first
    token: its first-token metrics cannot tell those labels apart, and ``--score answer`` can.

    ``seen``: the ``(task, subtask)`` pairs a run has already warned about (updated in place), so that a run over
    several models warns once per task and subtask, not once per model."""
    if score == "answer":
        return []
    if seen is not None:
        subtasks = [st for st in subtasks if (task.name, st) not in seen]
        seen.update((task.name, st) for st in subtasks)
        if not subtasks:
            return []
    messages = []
    for name, clashes in first_token_clashes(task, tokenizer, fmt, subtasks).items():
        n = sum(len(ls) for _t, ls in clashes)
        token, example = clashes[0]
        messages.append(f"task {task.name!r}, subtask {name!r}: {n} of {len(task.subtask(name).label_space)} labels "
                        f"share their first token with another label (e.g. {example[:3]} all start with {token!r}), "
                        "so first-token metrics cannot tell them apart; use --score answer to score whole labels")
    for m in messages:
        log.warning(m)
    return messages


def check_task(task: Task, tokenizer: PreTrainedTokenizerBase, max_length: int | None = None,
               fmt: PromptFormat = "raw") -> list[TaskIssue]:
    """All tokenizer-dependent problems of ``task``.

    - a query whose answers of two subtasks start with the same token (the contrast cannot be measured);
    - a label space whose labels the tokenizer cannot tell apart by their first token;
    - a prompt longer than ``max_length`` (the model's context).
    """
    issues: list[TaskIssue] = []
    file = task.source or task.name
    # One reference prompt per format: the answer's first token depends only on what precedes it at the end.
    probe = build_prompt(tokenizer, None, "x", task.field, fmt)

    def first(label: str) -> int:
        return label_token_ids(tokenizer, probe, label)[0]

    for name, clashes in first_token_clashes(task, tokenizer, fmt).items():
        for token, ls in clashes[:10]:
            issues.append(TaskIssue(
                "warning", file, None,
                f"subtask {name!r}: labels {ls} share their first token {token!r}, "
                "so first-token metrics within the label space cannot tell them apart",
                "use labels that differ in their first token, or score whole labels with --score answer"))
        if len(clashes) > 10:
            issues.append(TaskIssue("warning", file, None, f"subtask {name!r}: {len(clashes) - 10} more label clashes",
                                    "see above"))
    if task.is_contrastive:
        a, b = task.subtask_names
        for s in task.samples:
            fa = {first(x) for x in s.answers[a]}
            fb = {first(x) for x in s.answers[b]}
            shared = fa & fb
            if shared:
                tok = tokenizer.convert_ids_to_tokens(next(iter(shared)))
                issues.append(TaskIssue(
                    "error", file, s.rows[0] if s.rows else s.index + 1,
                    f"query {s.query!r}: answers {s.answers[a]} ({a}) and {s.answers[b]} ({b}) start with the same "
                    f"token {tok!r}, so the contrast cannot be measured",
                    "change one label or drop the row"))
    if max_length is not None:
        for name, st in task.subtasks.items():
            for s in task.samples:
                p = instructed_prompt(tokenizer, task, s, st.instruction, fmt)
                longest = max(len(label_token_ids(tokenizer, p, x)) for x in s.answers[name])
                if len(p) + longest > max_length:
                    issues.append(TaskIssue(
                        "error", file, s.rows[0] if s.rows else s.index + 1,
                        f"the {name} prompt has {len(p)} tokens plus a {longest}-token answer, over the model's "
                        f"context of {max_length}", "shorten the query or the instruction"))
    return issues
