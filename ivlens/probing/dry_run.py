"""``ivlens probe --dry-run``: the cost estimate of a probing run from the models' configs and prompt lengths (no
weights loaded), with each probe's fit timed by its cost model (:func:`ivlens.probing.cost.probe_layer_latency`).
The registry's cost estimate is :func:`probe_spec_costs`; printing is :mod:`ivlens.dry_run`'s."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ivlens.estimate.costs import CostEstimate, add_figures, probe_cost
from ivlens.estimate.inputs import dry_run_budget, model_infos, with_startup
from ivlens.estimate.model import ModelInfo
from ivlens.tasks import instruction_prompt

from .collect import parse_layers
from .cost import probe_layer_latency
from .instructions import instruction_set, organism_heldout
from .probes import layers_per_batch
from .run import probe_specs


def probe_costs(models: Sequence[str], tasks: Sequence[str], *, layers: str = "all", varying: str = "instructions",
                user_instructions: dict | None = None, fmt: str = "raw", batch_size: int | None = None,
                folds: int = 5, max_per_subtask: int | None = None, dtype: str = "float32", device: str = "cpu",
                memory_budget=None, infos: Sequence[ModelInfo] | None = None, figures: bool = True
                ) -> list[CostEstimate]:
    """The cost estimate of ``ivlens probe``, one per model."""
    budget = dry_run_budget(memory_budget, device)
    costs = []
    for info in infos or model_infos(models):
        held = organism_heldout(Path(info.path)) if Path(info.path).is_dir() else None
        rows = instruction_set(list(tasks), varying, user_instructions, held, max_per_subtask)
        lengths = [len(instruction_prompt(info.tokenizer, r.instruction, fmt)) for r in rows]
        n_layers = len(parse_layers(layers, info.shape.n_layers))
        classes = {(r.task, r.subtask) for r in rows}
        try:
            specs = probe_specs(pd.DataFrame([r.to_dict() for r in rows]), varying)  # the run's own probes
        except ValueError:  # a single class: the run itself refuses, with its own message
            specs = []
        n_probes = len(specs)
        d = info.shape.d_model
        # the layers the run fits at once (each probe's CV, shuffled-label, held-out and refit fits: analyse_store),
        # and each probe's seconds per layer when its fits are solved so
        solve_layers = min([n_layers] + [layers_per_batch(int(mask.sum()), d, len(names), 2 * folds + 2)
                                         for _, _, mask, _, _, names in specs])
        layer_seconds = sum(probe_layer_latency(int(mask.sum()), d, len(names), groups is not None, folds,
                                                layers=solve_layers) for _, _, mask, _, groups, names in specs)
        p = probe_cost(info.shape, lengths, n_layers, n_probes, dtype=dtype, batch_size=batch_size, budget=budget,
                       folds=folds, n_classes=len(classes), layer_seconds=layer_seconds,
                       layers_per_solve=solve_layers, model=info.name)
        add_figures(p, n_probes + 5 if figures and not costs else 0)  # accuracy per probe, LDA, PCA, 3 similarity maps
        costs.append(with_startup(p, info, dtype, not costs))
    return costs


def probe_spec_costs(s, infos: Sequence[ModelInfo]) -> list[CostEstimate]:
    """:func:`probe_costs` of a :class:`~ivlens.probing.ProbeSpec`."""
    return probe_costs([], list(s.tasks), layers=s.layers, varying=s.varying, user_instructions=dict(s.instructions),
                       fmt=s.format, batch_size=s.batch_size, folds=s.folds, max_per_subtask=s.max_per_subtask,
                       dtype=s.dtype, device=s.device, memory_budget=s.memory_budget, infos=infos,
                       figures=s.figures)

