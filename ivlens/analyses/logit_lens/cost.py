"""``ivlens logit-lens --dry-run``: the cost estimate of a run from the models' configs (no weights loaded)."""

from __future__ import annotations

from collections.abc import Sequence

from ivlens.estimate.costs import RUNTIME_BYTES, CostEstimate, probe_row_bytes, weight_bytes
from ivlens.estimate.flops import prompt_flops, unembed_flops
from ivlens.estimate.inputs import with_startup
from ivlens.estimate.model import ModelInfo
from ivlens.probing.collect import parse_layers
from ivlens.probing.instructions import instruction_set
from ivlens.tasks import instruction_prompt, load_task

from .spec import LogitLensSpec


def logit_lens_costs(spec: LogitLensSpec, infos: Sequence[ModelInfo]) -> list[CostEstimate]:
    """One cost estimate per model: the instruction-only prompts' forwards in batches of ``spec.batch_size`` (padded
    to the batch's longest), then one unembedding row per rephrasing and chosen layer, and the ``[n, d_vocab]``
    probabilities of one layer held at a time."""
    rows = instruction_set([load_task(spec.task)], max_per_subtask=spec.max_per_subtask)
    costs = []
    for info in infos:
        lengths = [len(instruction_prompt(info.tokenizer, r.instruction, spec.format)) for r in rows]
        n_layers = len(parse_layers(spec.layers, info.shape.n_layers))
        bs = spec.batch_size
        batches = [lengths[i:i + bs] for i in range(0, len(lengths), bs)]
        p = CostEstimate("logit-lens", info.name)
        p.flops = (sum(len(b) * prompt_flops(info.shape, max(b), logit_rows=0) for b in batches)
                   + len(rows) * n_layers * unembed_flops(info.shape))
        p.layer_calls = len(batches) * info.shape.n_layers + n_layers
        p.counts = {"instructions": len(rows), "forward_passes": len(batches), "layers": n_layers,
                    "lens_rows": len(rows) * n_layers}
        p.memory = {"runtime": RUNTIME_BYTES, "weights": weight_bytes(info.shape, spec.dtype),
                    "one batch's forward": bs * probe_row_bytes(info.shape, max(lengths), spec.dtype),
                    "one layer's logit lens": len(rows) * info.shape.d_vocab * 4 * 2}
        costs.append(with_startup(p, info, spec.dtype, not costs))
    return costs
