"""``ivlens logit-lens``: the logit lens of instruction vectors, layer by layer (``docs/logit-lens.md``).

The analysis added through the registry alone: this package (spec, lens maths, run, dry-run plan, report section)
and its entry :data:`ANALYSIS`, which :data:`ivlens.analyses.ANALYSES` lists.
"""

from __future__ import annotations

from ivlens.analyses.analysis import Analysis

from .cost import logit_lens_costs
from .run import LogitLensResult, run_logit_lens
from .section import logit_lens_section
from .spec import LogitLensSpec

__all__ = ["ANALYSIS", "LogitLensResult", "LogitLensSpec", "logit_lens_costs", "logit_lens_section", "run_logit_lens"]

ANALYSIS = Analysis("logit-lens", LogitLensSpec, run_logit_lens, logit_lens_costs, (logit_lens_section,),
                    needs_adapter=True, per_task=True, order=35,
                    example={"task": "adjectives", "layers": "0,-1", "max_per_subtask": 3, "n_boot": 200, "seed": 3})
