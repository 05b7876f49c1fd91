"""The analyses ivlens runs, in one place (the registry every caller reads).

Each analysis package declares its spec in ``ivlens.<package>.spec``; this module collects them. A run directory's
manifest names its analysis (``command``), and :func:`spec_from_manifest` rebuilds the spec it ran.
"""

from __future__ import annotations

from ivlens.eval.spec import EvalSpec
from ivlens.organism.spec import OrganismSpec
from ivlens.patching.spec import PatchSpec
from ivlens.probing.spec import ProbeSpec
from ivlens.specs import Spec, SpecError
from ivlens.steering.spec import SteerSpec
from ivlens.tracing.spec import TraceSpec

SPECS: dict[str, type[Spec]] = {s.analysis: s for s in (EvalSpec, PatchSpec, ProbeSpec, TraceSpec, OrganismSpec,
                                                         SteerSpec)}


def spec_from_manifest(manifest: dict) -> Spec:
    """The spec a run directory's manifest records (``command`` picks the class)."""
    cls = SPECS.get(manifest.get("command", ""))
    if cls is None or "spec" not in manifest:
        raise SpecError(f"this run directory records no {', '.join(SPECS)} spec (made by an older ivlens?): "
                        "start a new run instead of --resume")
    return cls(**manifest["spec"])
