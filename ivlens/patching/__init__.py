"""Instruction-vector localisation by layer patching: plans, the fast engine, metrics, interactions, figures.

>>> from ivlens.patching import patch_sweep
>>> res = patch_sweep(["organism-base", "organism-sft"], "adjectives", "adj_ant", layers="pairs", samples=100)
"""

from .engine import clean_run, patched_logits, patched_metrics, source_vectors
from .plan import PatchPlan, PatchRow, PlanError, parse_layer_sets, parse_positions
from .spec import PatchSpec
from .sweep import SweepResult, patch_sweep
from .trie import EngineStats, RowSpec, scheduled_work

__all__ = ["PatchSpec",
    "EngineStats", "PatchPlan", "PatchRow", "PlanError", "RowSpec", "SweepResult", "clean_run",
    "parse_layer_sets", "parse_positions", "patch_sweep", "patched_logits", "patched_metrics", "scheduled_work",
    "source_vectors",
]
