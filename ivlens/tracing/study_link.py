"""How a trace step of a study reads the study's other steps (the registry's ``link``,
:class:`ivlens.analyses.analysis.Analysis`): a read-out ``probe:<probe step>:<layer>`` reads that probe step's run
directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePath

from ivlens.specs import SpecError, StepRef

from .readout import parse_readout
from .spec import TraceSpec


def link_trace(spec: TraceSpec, others: Sequence[StepRef]) -> tuple[TraceSpec, tuple[str, ...]]:
    """``spec`` as it is, and the probe step its read-out reads (``()`` for none: no read-out, a vector file, an
    absolute run directory). A relative run directory is read from the study directory, so it must be one of the
    study's probe steps; else :class:`SpecError` naming them."""
    if spec.readout is None:
        return spec, ()
    src = parse_readout(spec.readout)
    if src.kind == "vector" or PurePath(src.path).is_absolute():
        return spec, ()
    rel = src.path.rstrip("/")
    probes = [o.rel for o in others if o.analysis == "probe"]
    if rel not in probes:
        raise SpecError(f"readout: {spec.readout!r} reads {src.path!r}, which is no probe step of this study (its "
                        f"probe steps write: {', '.join(probes) or 'none; add a probe block'})")
    return spec, (rel,)
