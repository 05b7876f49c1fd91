"""From a sweep's patch table to the tables and figures of a run: single-layer effects, interactions,
additivity summary, strongest sets, and (where the rows carry the linear estimate) how much of the effect the
linear estimate explains per set size."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd

from ivlens.runs import RunDir, atomic_write_text

from . import figures
from .interactions import (
    Correction,
    additivity_summary,
    interaction_stats,
    single_layer_effects,
    strongest_sets,
)
from .linearity import linearity_table

log = logging.getLogger(__name__)


@dataclass
class Analysis:
    single_layer: pd.DataFrame
    interactions: pd.DataFrame
    additivity: pd.DataFrame
    strongest: pd.DataFrame
    linearity: pd.DataFrame = field(default_factory=pd.DataFrame)


def analyse(rows: pd.DataFrame, *, effect: str = "delta_logit_vs_target", correction: Correction = "holm",
            alpha: float = 0.05, top_k: int = 10, run: RunDir | None = None, make_figures: bool = True) -> Analysis:
    """Compute the summary tables of a patch table; with ``run``, write them (and the figures) into it."""
    res = Analysis(single_layer=single_layer_effects(rows, effect),
                   interactions=interaction_stats(rows, effect, correction, alpha),
                   additivity=pd.DataFrame(), strongest=strongest_sets(rows, effect, top_k))
    res.additivity = additivity_summary(res.interactions)
    res.linearity = linearity_table(rows, effect)
    if run is None:
        return res
    run.write_table("single_layer", res.single_layer)
    run.write_table("strongest_sets", res.strongest)
    if not res.interactions.empty:
        run.write_table("interactions", res.interactions)
        run.write_table("additivity", res.additivity)
    if not res.linearity.empty:
        run.write_table("linearity", res.linearity)
    if make_figures:
        figures.plot_single_layer(res.single_layer, run.figure_path("single_layer.png"))
        figures.plot_pair_heatmaps(rows, res.interactions, res.single_layer, run.figure_path("pair_heatmaps.png"),
                                   effect)
        atomic_write_text(run.figure_path("strongest_sets.md"), figures.strongest_markdown(res.strongest))
        if not res.linearity.empty:
            figures.plot_linearity(res.linearity, run.figure_path("linearity.png"))
    log.info("analysis written to %s", run.path)
    return res
