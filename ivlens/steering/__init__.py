"""Steering with instruction-vector directions: add ``α · v`` to the residual stream of a query-only prompt and
measure, with patching's metrics, whether one linear direction does what a patched IV does (``docs/steering.md``).
"""

from .spec import SteerSpec

__all__ = ["SteerSpec"]
