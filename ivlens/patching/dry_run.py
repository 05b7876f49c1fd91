"""``ivlens patch --dry-run``: the cost estimate of a patch sweep from the models' configs and prompt lengths (no
weights loaded): the engine's own count of its work (:func:`engine_work`), answer-level scoring's token trie
(:func:`answer_trie`), the linear estimate's cost (:func:`add_linear_estimate`) and ``--screen``'s stand-in sets
(:func:`screened_stand_in`). The registry's cost estimate is :func:`patch_spec_costs`; printing is
:mod:`ivlens.dry_run`'s.

>>> costs = patch_costs(["tests/data/olmo2-1124-7b-config"], "adjectives", "adj_ant", layers="triplets",
...                     positions="first,last", samples=100)
>>> costs[0].counts["rows"]  # its peak memory depends on this machine's memory budget
1097600
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from ivlens.estimate.costs import (
    AnswerTrie,
    CostEstimate,
    TargetShape,
    add_figures,
    patch_cost,
    patch_row_bytes,
    trie_work,
)
from ivlens.estimate.flops import ModelShape, prompt_flops
from ivlens.estimate.inputs import chosen_samples, dry_run_budget, model_infos, with_startup
from ivlens.estimate.model import ModelInfo
from ivlens.scoring import ContinuationTrie
from ivlens.tasks import instructed_prompt, instruction_prompt, label_token_ids, load_task, query_prompt
from ivlens.tasks.prompts import AnswerCandidates

from .linear import linear_on
from .plan import PatchPlan, resolve_position
from .sweep import starts_with_bos
from .trie import RowSpec, scheduled_work


def engine_work(chunk: Sequence[TargetShape], layer_sets, n_layers: int, group_rows, continued: bool = False,
                ) -> tuple[int, int, int]:
    """The patching engine's own count (:func:`ivlens.patching.trie.scheduled_work`) for one chunk: executed
    layer-token evaluations, unembedded rows and layer calls, without running anything: :func:`ivlens.estimate
    .costs.trie_work` with each kind of position scheduled by the engine (:func:`position_work`). ``continued``: rows
    scored at the answer level (no last-position identity)."""
    sets = tuple(map(tuple, layer_sets))
    return trie_work(chunk, sets, n_layers, group_rows,
                     position=lambda last: position_work(sets, n_layers, last, continued))


@functools.lru_cache(maxsize=64)
def position_work(layer_sets: tuple[tuple[int, ...], ...], n_layers: int, last: bool, continued: bool
                  ) -> tuple[int, int]:
    """``(states, rows)`` of one patched position by :func:`~ivlens.patching.trie.scheduled_work`: the trie states
    the engine runs per recomputed column (summed over layers ``1 … n_layers − 1``), and its unembedded rows. A
    two-token target stands for every length: patched at its last token (``last``) or its first. Remembered per
    distinct argument: a 7B study's triplets (5,488 sets) are scheduled once per kind of position, not once per
    prompt length, model and task."""
    token = 1 if last else 0
    st = scheduled_work([RowSpec(0, 0, s, token) for s in layer_sets], [2], n_layers, group_rows=1 << 40,
                        continued=continued)
    return st.executed_evals // (2 - token), st.unembed_rows


def patch_costs(models: Sequence[str], task: str, subtask: str | None, *, layers: str = "single",
                positions: str = "first,last", samples: int | None = None, mode: str = "transfer",
                target: str = "bare", fmt: str = "raw", chunk_size: int = 25, batch_size: int | None = None,
                seed: int = 0, dtype: str = "float32", device: str = "cpu", memory_budget=None,
                figures: bool = True, split: str = "all", score: str = "first-token",
                infos: Sequence[ModelInfo] | None = None, linear_estimate: str = "auto", screen: int | None = None,
                remote: bool = False) -> list[CostEstimate]:
    """The cost estimate of ``ivlens patch`` with these options, one per model (see
    :func:`ivlens.patching.sweep.patch_sweep`).

    ``score="answer"``: the engine runs the targets once, keeping the rows' keys/values, and each distinct row (and
    each target-only and instructed run) scores the candidates' token trie against them (:func:`answer_trie`).
    With the linear estimate on (:func:`ivlens.patching.linear.linear_on`), every sample adds one forward and one
    backward per scored logit (:func:`add_linear_estimate`); ``screen=K`` runs the engine on the singles and at
    most ``K`` sets per size and position (:func:`screened_stand_in`)."""
    t = load_task(task)
    sub = t.subtask(subtask or t.subtask_names[0])
    other = t.other(sub.name) if t.is_contrastive else None
    budget = dry_run_budget(memory_budget, device)
    costs = []
    for info in infos or model_infos(models):
        tok = info.tokenizer
        chosen = chosen_samples(t, samples, seed, split, info)
        plan = PatchPlan.build(layers, positions, info.shape.n_layers)
        all_sets = plan.layer_sets
        linear = linear_on(linear_estimate, screen, all_sets, score=score, remote=remote)
        if screen is not None:
            plan = plan.with_layer_sets(screened_stand_in(all_sets, screen, len(plan.positions)))
        labels = AnswerCandidates.of(t, sub.name).labels if score == "answer" else ()
        targets, trie = [], None
        for s in chosen:
            instructed = instructed_prompt(tok, t, s, sub.instruction, fmt)
            tgt = (query_prompt(tok, t, s, fmt, query_style=target) if mode == "transfer"
                   else instructed_prompt(tok, t, s, t.subtask(other).instruction, fmt))
            has_bos = starts_with_bos(tok, tgt)
            pos = tuple(dict.fromkeys(resolve_position(p, len(tgt), t_inst=tgt.t_inst, has_bos=has_bos)
                                      for p in plan.positions))
            targets.append(TargetShape(len(tgt), pos, len(instructed)))
            if labels and trie is None:
                trie = answer_trie(tok, tgt, labels)
        src = len(instruction_prompt(tok, sub.instruction, fmt))
        work = functools.partial(engine_work, continued=True) if trie is not None else engine_work
        p = patch_cost(info.shape, targets, plan.layer_sets, src, dtype=dtype, chunk_size=chunk_size, budget=budget,
                       batch_size=batch_size, n_positions=len(plan.positions), model=info.name, engine_work=work,
                       answer=trie)
        p.notes.append(f"{t.name}/{sub.name}, {len(chosen)} samples ({split}), {layers} × {positions}, target "
                       f"{target}, score {score}, memory budget {budget / 2**30:.2f} GiB")
        if linear:
            add_linear_estimate(p, info.shape, [x.n_tokens for x in targets], 2 if other is not None else 1, dtype)
        if screen is not None:
            p.counts["ranked_sets"] = len(all_sets)
            p.notes.append(f"--screen {screen}: {len(plan.layer_sets):,} of {len(all_sets):,} layer sets run exactly "
                           f"(the singles and at most {screen} per size and position; which ones the linear "
                           "estimate decides, so the count is an upper bound and the sets a stand-in)")
        add_figures(p, 2 if figures and not costs else 0)  # single layers and pair heatmaps, once
        costs.append(with_startup(p, info, dtype, not costs))
    return costs


def answer_trie(tok, prompt, labels: Sequence[str]) -> AnswerTrie:
    """The token trie answer-level scoring runs for ``labels`` after ``prompt`` (a representative prompt: labels
    tokenise alike after every prompt of a format), as sizes (:class:`~ivlens.estimate.costs.AnswerTrie`)."""
    conts = [label_token_ids(tok, prompt, lab) for lab in labels]
    trie = ContinuationTrie.build(1, [0] * len(conts), conts)
    return AnswerTrie(len(labels), tuple(len(x) for x in trie.token[1:]))


def screened_stand_in(layer_sets: Sequence[tuple[int, ...]], k: int, n_positions: int) -> tuple[tuple[int, ...], ...]:
    """What ``--screen k`` runs, for counting before the estimate exists: the singles and, per set size ≥ 2, at
    most ``k × n_positions`` sets (each position's top ``k``, at most all of them), spread evenly over the size's
    sets (the ranking picks them by the data; spreading them gives a typical mix of first layers)."""
    by_size: dict[int, list[tuple[int, ...]]] = {}
    for s in layer_sets:
        by_size.setdefault(len(s), []).append(s)
    out: list[tuple[int, ...]] = []
    for size, sets in by_size.items():
        n = len(sets) if size == 1 else min(len(sets), k * n_positions)
        idx = sorted({int(round(x)) for x in np.linspace(0, len(sets) - 1, n)}) if n else []
        out += [sets[i] for i in idx]
    return tuple(out)


def add_linear_estimate(p: CostEstimate, shape: ModelShape, lengths: Sequence[int], n_scores: int,
                        dtype: str) -> CostEstimate:
    """The linear estimate's cost (:mod:`ivlens.patching.linear`): per target (``lengths``: the targets' tokens)
    one forward and ``n_scores`` backward passes (the label's logit, and the alternative's where the task has
    one), each backward about twice a forward; one target at a time, so its memory is one prompt's activations
    kept for the backward (counted beyond the engine's working set, which is free by then)."""
    p.flops += sum(prompt_flops(shape, n) * (1 + 2 * n_scores) for n in lengths)
    p.layer_calls += len(lengths) * shape.n_layers * (1 + 2 * n_scores)
    p.counts["gradient_passes"] = len(lengths)
    widest = max(lengths, default=0)
    graph = shape.n_layers * patch_row_bytes(shape, widest, widest, dtype)
    extra = max(0, graph - p.memory.get("engine working set", 0))
    if extra:
        p.memory["linear estimate's backward (one sample)"] = extra
    p.notes.append(f"linear estimate: one forward + {n_scores} backward per sample (--linear-estimate off drops it)")
    return p


def patch_spec_costs(s, infos: Sequence[ModelInfo]) -> list[CostEstimate]:
    """:func:`patch_costs` of a :class:`~ivlens.patching.PatchSpec` (with the source model's note)."""
    costs = patch_costs([], s.task, s.subtask, layers=s.layers, positions=s.positions, samples=s.samples,
                        mode=s.mode, target=s.target, fmt=s.format, chunk_size=s.chunk_size, batch_size=s.batch_size,
                        seed=s.seed, dtype=s.dtype, device=s.device, memory_budget=s.memory_budget,
                        figures=s.figures, split=s.split, score=s.score, infos=infos,
                        linear_estimate=s.linear_estimate, screen=s.screen, remote=s.remote)
    if s.source_model and costs:
        costs[0].notes.append(f"IVs from {s.source_model}: one more model in memory, one source run")
    return costs

