"""Instruction-following evaluation: IA, accuracy and the first-token view, with, without and against the
instruction (:mod:`.evaluate`; its spec: :mod:`.spec`).

>>> from ivlens.eval import evaluate, summarize
"""

from .evaluate import (
    CONDITIONS,
    SCORES,
    answer_columns,
    answer_scores,
    build_items,
    candidate_logprobs,
    evaluate,
    generate_batch,
    in_label_space,
    instruction_decides,
    matches,
    normalize,
    summarize,
)
from .spec import EvalSpec

__all__ = ["CONDITIONS", "SCORES", "EvalSpec", "answer_columns", "answer_scores", "build_items", "candidate_logprobs",
           "evaluate", "generate_batch", "in_label_space", "instruction_decides", "matches", "normalize", "summarize"]
