"""``ivlens patch``'s spec: every option of one run, typed and validated (:mod:`ivlens.specs`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from ivlens.specs import Backend, Correction, Format, PatchMode, PatchTarget, RemoteSpec, Score, Split


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
