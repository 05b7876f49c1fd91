"""``ivlens steer``'s spec: every option of one run, typed, validated and with its help (:mod:`ivlens.specs`)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, model_validator

from ivlens.specs import FormatField, MemoryBudgetField, ModelsSpec, PatchTarget, SampleSeedField, SplitField

from .plan import parse_steer_positions
from .vectors import parse_alphas, parse_vectors


class SteerSpec(ModelsSpec):
    """``ivlens steer``: add ``α · v`` (an IV direction) to the query-only prompt's residual, per layer and α."""

    analysis: ClassVar[str] = "steer"
    result_neutral: ClassVar[frozenset[str]] = frozenset({"batch_size", "memory_budget", "threads", "figures", "shard"})

    task: str = Field("adjectives", description="Task name or YAML spec.")
    subtask: str | None = Field(None, description="Subtask A: its IVs give the vectors, its label is scored "
                                                  "(default: the task's first).")
    vectors: str = Field("mean,diff", description="Directions: mean (A's mean IV), diff (A − B mean IVs), "
                                                  "probe:RUN_DIR (the probe run's A-vs-B direction coef[A] − "
                                                  "coef[B]), means:RUN_DIR (A − B class means of a probe run's "
                                                  "IVs), RUN_DIR@MODEL for another probed model's; comma-separated.")
    alphas: str = Field("0,0.5,1,2,4,8", description="Scales α, in units of the mean norm of A's IVs at the steered "
                                                     "layer.")
    layers: str = Field("all", description="Steered layers: all, or indices such as 0,3,-1 (one per row).")
    positions: str = Field("first,last,all", description="Where α·v is added in the query-only prompt: first (where "
                                                         "patching writes the IV), last, all (every token), bos, "
                                                         "token indices.")
    samples: int | None = Field(None, gt=0, description="Number of samples (drawn with --seed); default all.")
    split: SplitField = "all"
    target: PatchTarget = Field("bare", description="Query-only prompt: bare (the paper's) | formatted.")
    format: FormatField = "raw"
    max_per_subtask: int | None = Field(None, gt=0, description="Rephrasings per subtask for the vectors (default "
                                                                "all).")
    batch_size: int | None = Field(None, gt=0, description="Rows per bounded trie (default: from --memory-budget).")
    memory_budget: MemoryBudgetField = None
    chunk_size: int = Field(25, gt=0, description="Samples per unit file (the unit of --resume and --shard).")
    seed: SampleSeedField = 0
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: torch's choice).")
    figures: bool = Field(True, description="Write figures.")
    #: a finished transfer ``ivlens patch`` run of the same task, subtask, target and format: the steering is compared
    #: with its single layers and sets (``steer_vs_patch.parquet``); in a study, the matching patch step
    patch_run: str | None = Field(None, description="A finished transfer `ivlens patch` run of the same task, "
                                                    "subtask, target and format: compare the steering with its "
                                                    "single layers and sets (steer_vs_patch.parquet).")

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
