"""Tasks: typed task model, the built-in registry, user task specs, prompts and validation."""

from .prompts import (
    Batch,
    Prompt,
    build_prompt,
    instructed_prompt,
    instruction_prompt,
    label_token_ids,
    pad_left,
    query_prompt,
)
from .registry import builtin_names, load_task
from .requirements import require_contrastive, require_rephrasings
from .schema import Sample, Subtask, Task, TaskError

__all__ = [
    "Batch", "Prompt", "Sample", "Subtask", "Task", "TaskError", "build_prompt", "builtin_names",
    "instructed_prompt", "instruction_prompt", "label_token_ids", "load_task", "pad_left", "query_prompt",
    "require_contrastive", "require_rephrasings",
]
