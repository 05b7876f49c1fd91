"""``ivlens eval``'s spec: every option of one run, typed and validated (:mod:`ivlens.specs`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from ivlens.specs import Format, ModelsSpec, QueryStyle, Score, Split


class EvalSpec(ModelsSpec):
    """``ivlens eval``: instruction-following accuracy with, without and against the instruction."""

    analysis: ClassVar[str] = "eval"
    result_neutral: ClassVar[frozenset[str]] = frozenset({"batch_size", "shard"})

    task: str
    subtask: str | None = None
    samples: int | None = Field(default=None, gt=0)
    format: Format = "raw"
    split: Split = "all"
    query_style: QueryStyle = "formatted"
    prefill: str | None = None
    judge: str | None = Field(default=None, pattern=r"^[\w.]+:\w+$")
    score: Score = "first-token"
    batch_size: int = Field(default=16, gt=0)
    chunk_size: int = Field(default=8, gt=0)
    seed: int = 0
