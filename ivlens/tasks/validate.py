"""Checks of a task against a tokenizer: can its contrasts and label spaces be measured by first token,
and do its prompts fit the model's context?

File-level problems (missing/extra columns, empty cells, a subtask without instruction) are raised as
:class:`~ivlens.tasks.schema.TaskError` when the task is loaded; the checks here need a tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

from .prompts import PromptFormat, build_prompt, instructed_prompt, label_token_ids
from .schema import Task


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

    for name, st in task.subtasks.items():
        by_token: dict[int, list[str]] = {}
        for label in st.label_space:
            by_token.setdefault(first(label), []).append(label)
        clashes = [ls for ls in by_token.values() if len(ls) > 1]
        for ls in clashes[:10]:
            issues.append(TaskIssue(
                "warning", file, None,
                f"subtask {name!r}: labels {ls} share their first token {tokenizer.convert_ids_to_tokens(first(ls[0]))!r}, "
                "so first-token metrics within the label space cannot tell them apart",
                "use labels that differ in their first token, or rely on generation-based IA/accuracy"))
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
