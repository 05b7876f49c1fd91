"""``ivlens patch``'s spec: every option of one run, typed and validated (:mod:`ivlens.specs`)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, model_validator

from ivlens.specs import (
    Backend,
    Correction,
    Format,
    LinearEstimate,
    PatchMode,
    PatchTarget,
    RemoteSpec,
    Score,
    Split,
)


class PatchSpec(RemoteSpec):
    """``ivlens patch``: IVs of layer sets patched into targets, then interactions and figures."""

    analysis: ClassVar[str] = "patch"
    result_neutral: ClassVar[frozenset[str]] = frozenset({"batch_size", "memory_budget", "threads", "figures", "shard"})

    task: str = "adjectives"
    subtask: str | None = None
    layers: str = "single"
    positions: str = "first,last"
    samples: int | None = Field(default=None, gt=0)
    split: Split = "all"
    mode: PatchMode = "transfer"
    source_model: str | None = None
    target: PatchTarget = "bare"
    format: Format = "raw"
    score: Score = "first-token"
    batch_size: int | None = Field(default=None, gt=0)
    memory_budget: str | None = None
    chunk_size: int = Field(default=25, gt=0)
    seed: int = 0
    effect: str = "delta_logit_vs_target"
    correction: Correction = "holm"
    alpha: float = Field(default=0.05, gt=0, lt=1)
    threads: int | None = Field(default=None, gt=0)
    backend: Backend = "torch"
    figures: bool = True
    #: the rows' first-order estimate (:mod:`ivlens.patching.linear`): ``auto`` = on for sets of ≥ 2 layers
    linear_estimate: LinearEstimate = "auto"
    #: ``K``: run exactly only the singles and each position's top K sets per size by the linear estimate
    screen: int | None = Field(default=None, gt=0)

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
