"""``ivlens organism build``'s spec: every option of one run, typed and validated (:mod:`ivlens.specs`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from ivlens.specs import OrganismSize, OrganismVariant, Spec


class OrganismSpec(Spec):
    """``ivlens organism build``: train base → SFT → DPO and write the card."""

    analysis: ClassVar[str] = "organism"
    result_neutral: ClassVar[frozenset[str]] = frozenset({"force"})

    seed: int = 0
    size: OrganismSize = "small"
    variant: OrganismVariant = "gist"
    force: bool = False
    measure: bool = True
    threads: int = Field(2, ge=1, le=256)  # torch threads the build trains on (its numerics depend on them)
