"""``ivlens steer --dry-run``: the cost estimate of a steering sweep from the models' configs and prompt lengths (no
weights loaded), with the patching engine's own count of the additive rows (the registry's cost estimate:
:func:`steer_costs`; printing is :mod:`ivlens.dry_run`'s)."""

from __future__ import annotations

from collections.abc import Sequence

from ivlens.estimate.costs import CostEstimate, TargetShape, add_figures, patch_cost
from ivlens.estimate.flops import prompt_flops
from ivlens.estimate.inputs import chosen_samples, dry_run_budget, model_infos, with_startup
from ivlens.estimate.model import ModelInfo
from ivlens.patching.sweep import starts_with_bos
from ivlens.patching.trie import RowSpec, scheduled_work
from ivlens.probing.collect import parse_layers
from ivlens.probing.instructions import instruction_set
from ivlens.tasks import instructed_prompt, instruction_prompt, load_task, query_prompt

from .plan import parse_steer_positions, resolve_span
from .vectors import parse_alphas, parse_vectors


def steer_costs(spec, infos: Sequence[ModelInfo] | None = None) -> list[CostEstimate]:
    """The cost estimate of ``ivlens steer`` for a :class:`~ivlens.specs.SteerSpec`, one per model: patching's
    (:func:`ivlens.estimate.costs.patch_cost`) with the engine's own count of the additive rows
    (:func:`ivlens.patching.trie.scheduled_work` with ``edit="add"``), plus the IV collection of the vectors."""
    t = load_task(spec.task)
    sub = t.subtask(spec.subtask or t.subtask_names[0])
    alphas = parse_alphas(spec.alphas)
    n_src = len(parse_vectors(spec.vectors)) * len(alphas)
    # α = 0 adds the zero vector whatever the direction: the engine runs those rows once (first_equal_sources)
    source = [v % len(alphas) if alphas[v % len(alphas)] == 0 else v for v in range(n_src)]
    positions = parse_steer_positions(spec.positions)
    budget = dry_run_budget(spec.memory_budget, spec.device)
    n_instr = len(instruction_set([t], "instructions", None, None, spec.max_per_subtask))
    costs = []
    for info in infos or model_infos(list(spec.models), require_adapter=True):
        tok, L = info.tokenizer, info.shape.n_layers
        layers = parse_layers(spec.layers, L)
        chosen = chosen_samples(t, spec.samples, spec.seed, spec.split, info)
        targets, spans = [], {}
        for s in chosen:
            tgt = query_prompt(tok, t, s, spec.format, query_style=spec.target)
            has_bos = starts_with_bos(tok, tgt)
            sp = tuple(resolve_span(p, len(tgt), has_bos=has_bos) for p in positions)
            spans[len(tgt), tuple(x[0] for x in sp)] = sp
            targets.append(TargetShape(len(tgt), tuple(x[0] for x in sp),
                                       len(instructed_prompt(tok, t, s, sub.instruction, spec.format))))

        def work(chunk, _sets, n_layers, group_rows, spans=spans, layers=layers, source=source):
            rows, lengths = [], []
            for b, tg in enumerate(chunk):
                lengths.append(tg.n_tokens)
                rows += [RowSpec(b, source[v], (layer,), tok_i, span) for v in range(n_src) for layer in layers
                         for tok_i, span in spans[tg.n_tokens, tg.positions]]
            st = scheduled_work(rows, lengths, n_layers, group_rows=group_rows, edit="add")
            return st.executed_evals, st.unembed_rows, st.layer_calls

        src = len(instruction_prompt(tok, sub.instruction, spec.format))
        p = patch_cost(info.shape, targets, [(layer,) for layer in layers] * n_src, src, dtype=spec.dtype,
                       chunk_size=spec.chunk_size, budget=budget, batch_size=spec.batch_size,
                       n_positions=len(positions), model=info.name, engine_work=work)
        p.command = "steer"
        p.flops += n_instr * prompt_flops(info.shape, src)
        p.counts["forward_passes"] += n_instr
        p.notes.append(f"{t.name}/{sub.name}, {len(chosen)} samples ({spec.split}), {n_src} vector × α, {len(layers)} layers × "
                       f"{spec.positions}; {n_instr} instruction IVs for the vectors; memory budget "
                       f"{budget / 2**30:.2f} GiB")
        add_figures(p, len(parse_vectors(spec.vectors)) if spec.figures and not costs else 0)
        costs.append(with_startup(p, info, spec.dtype, not costs))
    return costs

