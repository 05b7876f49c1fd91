"""``ivlens probe``'s spec: every option of one run, typed, validated and with its help (:mod:`ivlens.specs`)."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from ivlens.probing.instructions import read_user_instructions
from ivlens.specs import Cli, FormatField, MemoryBudgetField, RemoteSpec, SpecError, Varying


def user_instructions(given: list[str]) -> dict[str, str]:
    """``--instructions NAME=PATH`` (repeated) → ``{class name: CSV path}``."""
    return {name: str(path) for name, path in map(read_user_instructions, given)}


def layer_numbers(text: str) -> tuple[int, ...]:
    """``--figure-layers 0,3,-1`` → ``(0, 3, -1)``."""
    numbers = []
    for x in text.split(","):
        try:
            numbers.append(int(x))
        except ValueError:
            raise SpecError(f"--figure-layers: {x!r} is not a layer number") from None
    return tuple(numbers)


class ProbeSpec(RemoteSpec):
    """``ivlens probe``: probes, LDA and similarity of IVs (residual at T_inst of instruction-only prompts)."""

    analysis: ClassVar[str] = "probe"
    result_neutral: ClassVar[frozenset[str]] = frozenset({"batch_size", "memory_budget", "shard", "figures"})

    tasks: Annotated[tuple[str, ...], Cli(short="-t")] = Field(
        ("adjectives", "animals"), description="comma-separated built-in tasks or YAML specs")
    layers: str = Field("all", description="all | comma-separated layers (negative from the end)")
    varying: Varying = Field("instructions", description="instructions (rephrasings) or labels (label-space "
                                                         "variants: yes/no -> Y/N, ...)")
    #: extra class name → CSV path
    instructions: Annotated[dict[str, str], Cli(repeat=True, parse=user_instructions)] = Field(
        default_factory=dict, description="extra class from a CSV index,instruction: NAME=PATH (repeatable)")
    max_per_subtask: int | None = Field(None, gt=0, description="first N rephrasings of each file (quick runs; "
                                                                "default all)")
    folds: int = Field(5, ge=2, description="stratified CV folds")
    figure_layers: Annotated[tuple[int, ...] | None, Cli(parse=layer_numbers)] = Field(
        None, description="layers of the LDA/PCA scatters and heatmaps (default first, middle, last)")
    batch_size: int | None = Field(None, gt=0, description="instructions per forward (default: as many as fit "
                                                           "--memory-budget)")
    memory_budget: MemoryBudgetField = None
    format: FormatField = "raw"
    seed: int = Field(0, description="seed of the CV folds and label shuffles")
    figures: bool = Field(True, description="Write figures.")

