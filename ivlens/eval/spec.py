"""``ivlens eval``'s spec: every option of one run, typed, validated and with its help (:mod:`ivlens.specs`)."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from ivlens.specs import Cli, FormatField, ModelsSpec, QueryStyle, SampleSeedField, ScoreField, SplitField


class EvalSpec(ModelsSpec):
    """``ivlens eval``: instruction-following accuracy with, without and against the instruction."""

    analysis: ClassVar[str] = "eval"
    result_neutral: ClassVar[frozenset[str]] = frozenset({"batch_size", "shard"})

    task: Annotated[str, Cli(short="-t")] = Field(description="built-in task name or path of a YAML task spec")
    subtask: Annotated[str | None, Cli(short="-s")] = Field(None, description="score only this subtask")
    samples: Annotated[int | None, Cli(short="-n")] = Field(None, gt=0, description="number of samples (default all)")
    format: FormatField = "raw"
    split: SplitField = "all"
    query_style: QueryStyle = Field("formatted", description="query-only prompt")
    prefill: str | None = Field(None, description="assistant prefill (chat format)")
    judge: str | None = Field(None, pattern=r"^[\w.]+:\w+$",
                              description="IA judge 'module:function(answer, subtask, sample) -> bool'")
    score: ScoreField = "first-token"
    batch_size: int = Field(16, gt=0, description="prompts per generation batch")
    chunk_size: int = Field(8, gt=0, description="samples per unit file (the unit of --resume and --shard)")
    seed: SampleSeedField = 0
