"""``ivlens organism build``'s spec: every option of one run, typed, validated and with its help (:mod:`ivlens.specs`)."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from ivlens.specs import Cli, OrganismSize, OrganismVariant, Spec


class OrganismSpec(Spec):
    """``ivlens organism build``: train base → SFT → DPO and write the card."""

    analysis: ClassVar[str] = "organism"
    result_neutral: ClassVar[frozenset[str]] = frozenset({"force"})

    seed: int = Field(0, description="training seed (same seed → same weights)")
    size: OrganismSize = Field("small", description="small (the organism) or tiny (seconds, for tests)")
    variant: OrganismVariant = Field("gist", description="gist (planted IVs, default) or natural (control)")
    force: bool = Field(False, description="rebuild even if a finished build exists")
    measure: Annotated[bool, Cli(flag="--no-measure")] = Field(True, description="skip measuring (card without "
                                                                                 "figures)")
    #: torch threads the build trains on (its numerics depend on them)
    threads: Annotated[int, Cli(min=1)] = Field(2, ge=1, le=256, description="torch threads to train on (the "
                                                                              "weights depend on them: the card "
                                                                              "records them)")
