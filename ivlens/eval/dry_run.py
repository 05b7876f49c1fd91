"""``ivlens eval --dry-run``: the cost estimate of an evaluation from the models' configs and prompt lengths (no
weights loaded); answer-level scoring's token trie is patching's (:func:`ivlens.patching.dry_run.answer_trie`). The
registry's cost estimate is :func:`eval_spec_costs`; printing is :mod:`ivlens.dry_run`'s."""

from __future__ import annotations

from collections.abc import Sequence

from ivlens.estimate.costs import DTYPE_BYTES, CostEstimate, add_answer_scoring, eval_cost
from ivlens.estimate.inputs import chosen_samples, dry_run_budget, model_infos, with_startup
from ivlens.estimate.model import ModelInfo
from ivlens.patching.dry_run import answer_trie
from ivlens.scoring import node_row_bytes
from ivlens.tasks import build_prompt, label_token_ids, load_task
from ivlens.tasks.prompts import AnswerCandidates


def eval_costs(models: Sequence[str], task: str, *, subtask: str | None = None, samples: int | None = None,
               fmt: str = "raw", query_style: str = "formatted", batch_size: int = 16, seed: int = 0,
               dtype: str = "float32", split: str = "all", score: str = "first-token", device: str = "cpu",
               infos: Sequence[ModelInfo] | None = None, **_) -> list[CostEstimate]:
    """The cost estimate of ``ivlens eval``, one per model (every condition of every sample and scored subtask);
    ``score="answer"`` adds each prompt's cached forward and the candidates' token trie (:func:`answer_trie`)."""
    t = load_task(task)
    subs = [t.subtask(subtask).name] if subtask else t.subtask_names
    costs = []
    for info in infos or model_infos(models):
        tok = info.tokenizer
        chosen = chosen_samples(t, samples, seed, split, info)
        lengths = []
        for s in chosen:
            for st in subs:
                instrs = [t.subtasks[st].instruction, None]
                if t.is_contrastive:
                    instrs.append(t.subtasks[t.other(st)].instruction)
                lengths += [len(build_prompt(tok, i, s.query, t.field, fmt, query_style)) for i in instrs]
        probe = build_prompt(tok, t.subtasks[subs[0]].instruction, chosen[0].query, t.field, fmt, query_style)
        longest = max(len(label_token_ids(tok, probe, lab)) for st in t.subtasks.values() for lab in st.label_space)
        p = eval_cost(info.shape, lengths, min(longest + 2, 16), dtype=dtype, batch_size=batch_size, model=info.name)
        if score == "answer":  # each prompt once (with its cache), then the candidates' token trie against it
            trie = answer_trie(tok, probe, AnswerCandidates.of(t, subs[0]).labels)
            budget = dry_run_budget(None, device) // 2
            cap = max(1, budget // (len(trie.nodes) * node_row_bytes(info.shape, max(lengths) + len(trie.nodes),
                                                                   DTYPE_BYTES[dtype])))
            add_answer_scoring(p, info.shape, lengths, trie, batch_size=batch_size, node_cap=cap, dtype=dtype)
        costs.append(with_startup(p, info, dtype, not costs))
    return costs


def eval_spec_costs(s, infos: Sequence[ModelInfo]) -> list[CostEstimate]:
    """:func:`eval_costs` of an :class:`~ivlens.eval.EvalSpec`."""
    return eval_costs([], s.task, subtask=s.subtask, samples=s.samples, fmt=s.format, query_style=s.query_style,
                      batch_size=s.batch_size, seed=s.seed, dtype=s.dtype, split=s.split, score=s.score, device=s.device,
                      infos=infos)

