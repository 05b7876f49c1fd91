"""``ivlens logit-lens``'s spec: every option of one run, with its help text (the command is generated from it)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from ivlens.specs import FormatField, ModelsSpec


class LogitLensSpec(ModelsSpec):
    """The logit lens of instruction vectors: each IV (residual after layer l at T_inst of an instruction-only prompt)
    read through the model's final norm and unembedding, with the probability it puts on its own subtask's labels
    against the other subtask's, per layer, with a bootstrap CI over rephrasings."""

    analysis: ClassVar[str] = "logit-lens"
    result_neutral: ClassVar[frozenset[str]] = frozenset({"batch_size"})

    task: str = Field(description="built-in task name or path of a YAML task spec (two or more subtasks)")
    layers: str = Field(default="all", description="all | comma-separated layers (negative from the end)")
    max_per_subtask: int | None = Field(default=None, gt=0, description="first N rephrasings of each subtask "
                                                                         "(quick runs; default all)")
    top_k: int = Field(default=10, gt=0, le=100, description="tokens listed per subtask and layer (the most "
                                                             "probable under the mean logit lens)")
    n_boot: int = Field(default=2000, ge=100, description="bootstrap resamples of the rephrasings for the "
                                                          "confidence intervals")
    level: float = Field(default=0.95, gt=0.5, lt=1.0, description="confidence level of the intervals")
    format: FormatField = "raw"
    batch_size: int = Field(default=16, gt=0, description="instruction prompts per forward pass")
    seed: int = Field(default=0, description="seed of the bootstrap resamples")

    @property
    def shardable(self) -> bool:
        """One forward per rephrasing and model: a run is small, so it runs whole (``--shard`` is refused)."""
        return False

    @field_validator("shard")
    @classmethod
    def _whole(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError("a logit-lens run is one forward per rephrasing and model: it runs whole; drop --shard")
        return v
