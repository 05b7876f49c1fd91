"""``ivlens probe``'s spec: every option of one run, typed and validated (:mod:`ivlens.specs`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from ivlens.specs import Format, RemoteSpec, Varying


class ProbeSpec(RemoteSpec):
    """``ivlens probe``: probes, LDA and similarity of IVs (residual at T_inst of instruction-only prompts)."""

    analysis: ClassVar[str] = "probe"
    result_neutral: ClassVar[frozenset[str]] = frozenset({"batch_size", "memory_budget", "shard"})

    tasks: tuple[str, ...] = ("adjectives", "animals")
    layers: str = "all"
    varying: Varying = "instructions"
    instructions: dict[str, str] = Field(default_factory=dict)  # extra class name → CSV path
    max_per_subtask: int | None = Field(default=None, gt=0)
    folds: int = Field(default=5, ge=2)
    figure_layers: tuple[int, ...] | None = None
    batch_size: int | None = Field(default=None, gt=0)
    memory_budget: str | None = None
    format: Format = "raw"
    seed: int = 0
