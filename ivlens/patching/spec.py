"""``ivlens patch``'s spec: every option of one run, typed, validated and with its help (:mod:`ivlens.specs`)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field, model_validator

from ivlens.specs import (
    Backend,
    Cli,
    Correction,
    FormatField,
    LinearEstimate,
    MemoryBudgetField,
    PatchMode,
    PatchTarget,
    RemoteSpec,
    SampleSeedField,
    ScoreField,
    SplitField,
)


class PatchSpec(RemoteSpec):
    """``ivlens patch``: IVs of layer sets patched into targets, then interactions and figures."""

    analysis: ClassVar[str] = "patch"
    result_neutral: ClassVar[frozenset[str]] = frozenset({"batch_size", "memory_budget", "threads", "figures", "shard"})

    task: str = Field("adjectives", description="Task name or YAML spec.")
    subtask: str | None = Field(None, description="Subtask whose IV is patched (default: the task's first).")
    layers: str = Field("single", description="single | pairs | triplets | N-sets (every set of up to N layers, e.g. "
                                              "4-sets) | explicit sets like '3,5,7;2,4'.")
    positions: str = Field("first,last", description="Target positions: bos, first, last, t_inst, or token indices.")
    samples: int | None = Field(None, gt=0, description="Number of samples (drawn with --seed); default all.")
    split: SplitField = "all"
    mode: PatchMode = Field("transfer", description="transfer (IV into the query-only prompt) | contrastive (subtask "
                                                    "A's IV into subtask B's instructed prompt at T_inst).")
    source_model: str | None = Field(None, description="Take the IVs from this checkpoint (same shape).")
    target: PatchTarget = Field("bare", description="Query-only target: bare (the paper's) | formatted.")
    format: FormatField = "raw"
    score: ScoreField = "first-token"
    batch_size: int | None = Field(None, gt=0, description="Rows per bounded trie of batched layer calls (default: "
                                                           "from --memory-budget).")
    memory_budget: MemoryBudgetField = None
    chunk_size: int = Field(25, gt=0, description="Samples per unit file (the unit of --resume and --shard).")
    seed: SampleSeedField = 0
    effect: str = Field("delta_logit_vs_target", description="Effect column for interactions and figures.")
    correction: Correction = Field("holm", description="Multiple-comparison correction.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level after correction.")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: torch's choice).")
    backend: Backend = Field("torch", description="torch (the fast engine) | nnsight (whole forwards via nnsight).")
    figures: bool = Field(True, description="Write figures.")
    #: the rows' first-order estimate (:mod:`ivlens.patching.linear`): ``auto`` = on for sets of ≥ 2 layers
    linear_estimate: LinearEstimate = Field(
        "auto", description="The rows' first-order (attribution-patching) estimate and nonlinearity = effect − "
                            "estimate: auto (on for sets of two or more layers) | on | off. One forward and "
                            "backward per sample.")
    #: ``K``: run exactly only the singles and each position's top K sets per size by the linear estimate
    screen: Annotated[int | None, Cli(min=1)] = Field(
        None, gt=0, description="Rank every set by its linear estimate and run the exact engine only on the singles "
                                "and each position's top K sets of every size ≥ 2 (with --layers pairs, triplets or "
                                "N-sets, e.g. 4-sets).")

    @model_validator(mode="after")
    def _linear_options(self) -> PatchSpec:
        wants = self.linear_estimate == "on" or self.screen is not None
        what = "--screen" if self.screen is not None else "--linear-estimate on"
        if self.screen is not None and self.linear_estimate == "off":
            raise ValueError("--screen ranks the sets by their linear estimate: drop --linear-estimate off")
        if wants and self.score == "answer":
            raise ValueError(f"{what} needs --score first-token (the estimate is the gradient of the label's "
                             "logit): drop --score answer")
        if wants and self.remote:
            raise ValueError(f"{what} runs the estimate's backward pass on the local engine: drop --remote")
        if self.screen is not None and self.layers.strip() == "single":
            raise ValueError("--screen ranks sets of two or more layers: use --layers pairs, triplets or N-sets "
                             "(e.g. 4-sets)")
        return self

    def result_fields(self) -> dict[str, Any]:
        """As :meth:`Spec.result_fields`; ``linear_estimate`` and ``screen`` enter only when set, so runs made
        before the options existed keep their hashes."""
        fields = super().result_fields()
        if self.linear_estimate == "auto":
            fields.pop("linear_estimate", None)
        if self.screen is None:
            fields.pop("screen", None)
        return fields
