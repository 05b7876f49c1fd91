"""``ivlens steer``'s spec: every option of one run, typed and validated (:mod:`ivlens.specs`)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, model_validator

from ivlens.specs import Format, ModelsSpec, PatchTarget, Split

from .plan import parse_steer_positions
from .vectors import parse_alphas, parse_vectors


class SteerSpec(ModelsSpec):
    """``ivlens steer``: add ``α · v`` (an IV direction) to the query-only prompt's residual, per layer and α."""

    analysis: ClassVar[str] = "steer"
    result_neutral: ClassVar[frozenset[str]] = frozenset({"batch_size", "memory_budget", "threads", "figures", "shard"})

    task: str = "adjectives"
    subtask: str | None = None
    vectors: str = "mean,diff"
    alphas: str = "0,0.5,1,2,4,8"
    layers: str = "all"
    positions: str = "first,last,all"
    samples: int | None = Field(default=None, gt=0)
    split: Split = "all"
    target: PatchTarget = "bare"
    format: Format = "raw"
    max_per_subtask: int | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, gt=0)
    memory_budget: str | None = None
    chunk_size: int = Field(default=25, gt=0)
    seed: int = 0
    threads: int | None = Field(default=None, gt=0)
    figures: bool = True
    #: a finished transfer ``ivlens patch`` run of the same task, subtask, target and format: the steering is compared
    #: with its single layers and sets (``steer_vs_patch.parquet``); in a study, the matching patch step
    patch_run: str | None = None

    def result_fields(self) -> dict[str, Any]:
        fields = super().result_fields()
        if self.patch_run is None:  # the runs made before the option existed keep their hashes
            fields.pop("patch_run", None)
        return fields

    @model_validator(mode="after")
    def _grid(self) -> SteerSpec:
        parse_vectors(self.vectors)
        parse_alphas(self.alphas)
        parse_steer_positions(self.positions)
        return self
