"""Instruction-following evaluation: IA, accuracy and the first-token view, per condition.

For every sample and *scored* subtask S, three conditions:

- ``instructed``: S's instruction + the query; does the model answer S?
- ``query_only``: the query without instruction (the format without the instruction); what does the model
  do by default?
- ``other_instruction`` (contrastive tasks): the other subtask's instruction + the query; scored against S,
  so a model that follows instructions scores *low* here.

Metrics per row:

- **IA** (the paper's instruction-following accuracy): the greedy answer, cut at the first newline and
  stripped of surrounding whitespace, punctuation and quotes, lies in S's label space (case-insensitive;
  a multi-word label matches the answer's first words). A user *judge* ``f(answer, subtask, sample) -> bool``
  can replace the label-space test.
- **accuracy**: the answer is one of the sample's accepted answers for S.
- **first-token view**: the logit, probability and rank (``1 + #{tokens with a larger logit}``: 1 = top-1, as in
  :mod:`ivlens.patching.metrics`) of the first token of S's answer among all tokens at the answer position, and its
  rank among the first tokens of S's label space (1 = it wins there).

With ``score="answer"`` each row also scores every candidate label (every subtask's label space) by its
teacher-forced log-probability after the prompt (:mod:`ivlens.scoring`: each prompt runs once and every candidate is
scored against its cached keys/values):
``answer_logprob`` (the best accepted answer's), ``answer_rank`` (1 = top-1 among the candidates),
``answer_rank_in_space`` (among S's label space, 1 = best), ``answer_top1``, ``answer_ia`` (the best candidate lies
in S's label space) and ``answer_accuracy`` (it is an accepted answer). Labels that share their first token (numbers
with many tokenizers) are told apart only this way; :func:`summarize` then ranks by them.

For contrastive tasks, ``ia_other`` / ``acc_other`` say whether the answer followed the *other* subtask.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import pandas as pd
import torch

from ivlens.models.greedy import greedy_generate
from ivlens.models.load import LoadedModel
from ivlens.scoring import teacher_forced_scores
from ivlens.tasks.prompts import (
    AnswerCandidates,
    Prompt,
    PromptFormat,
    QueryStyle,
    build_prompt,
    label_space_first_ids,
    label_token_ids,
    labels_token_ids,
    pad_left,
)
from ivlens.tasks.schema import Sample, Subtask, Task
from ivlens.tasks.validate import warn_first_token_clashes

log = logging.getLogger(__name__)

Judge = Callable[[str, Subtask, Sample], bool]
CONDITIONS = ("instructed", "query_only", "other_instruction")
SCORES = ("first-token", "answer")
_STRIP = " \t\r\n.,;:!?\"'`()[]{}*"


def normalize(text: str) -> str:
    """Lower-case, first line, surrounding whitespace/punctuation/quotes removed, inner spaces collapsed."""
    first = text.strip().split("\n", 1)[0] if text.strip() else ""
    return re.sub(r"\s+", " ", first.strip(_STRIP)).lower()


def matches(answer: str, label: str) -> bool:
    """``answer`` (normalised) equals ``label`` or starts with it as whole words."""
    a, lab = normalize(answer), normalize(label)
    if not lab:
        return False
    if a == lab:
        return True
    words = a.split(" ")
    n = len(lab.split(" "))
    return " ".join(words[:n]).strip(_STRIP) == lab


def in_label_space(answer: str, labels: Sequence[str]) -> bool:
    """``answer`` :func:`matches` one of ``labels`` (the normalised labels are indexed once per label space)."""
    exact, by_words = _label_index(tuple(labels))
    a = normalize(answer)
    if a in exact:
        return True
    words = a.split(" ")
    return any(" ".join(words[:n]).strip(_STRIP) in labs for n, labs in by_words)


@lru_cache(maxsize=256)
def _label_index(labels: tuple[str, ...]) -> tuple[frozenset[str], tuple[tuple[int, frozenset[str]], ...]]:
    """The non-empty normalised labels, and the same grouped by their number of words: what :func:`matches`
    compares an answer with, so a label space is matched by set look-ups, not label by label."""
    normed = {lab for lab in map(normalize, labels) if lab}
    by_words: dict[int, set[str]] = {}
    for lab in normed:
        by_words.setdefault(len(lab.split(" ")), set()).add(lab)
    return frozenset(normed), tuple((n, frozenset(s)) for n, s in sorted(by_words.items()))


@dataclass(frozen=True)
class EvalItem:
    sample: Sample
    scored: str  # subtask whose answer is scored
    condition: str
    prompt: Prompt


def build_items(lm: LoadedModel, task: Task, samples: Sequence[Sample], subtasks: Sequence[str],
                fmt: PromptFormat, conditions: Sequence[str], query_style: QueryStyle = "formatted",
                prefill: str | None = None) -> list[EvalItem]:
    tok = lm.tokenizer
    items = []
    for s in samples:
        for st in subtasks:
            for cond in conditions:
                if cond == "instructed":
                    instr = task.subtasks[st].instruction
                elif cond == "other_instruction":
                    if not task.is_contrastive:
                        continue
                    instr = task.subtasks[task.other(st)].instruction
                elif cond == "query_only":
                    instr = None
                else:
                    raise ValueError(f"unknown condition {cond!r}; choose from {CONDITIONS}")
                p = build_prompt(tok, instr, s.query, task.field, fmt, query_style, prefill)
                items.append(EvalItem(s, st, cond, p))
    return items


@torch.no_grad()
def generate_batch(lm: LoadedModel, prompts: Sequence[Prompt], max_new_tokens: int
                   ) -> tuple[list[str], torch.Tensor]:
    """Greedy continuations (decoded, special tokens skipped) and the first answer token's logits
    ``[batch, d_vocab]``, for left-padded prompts: ``generate``'s, by the lean loop of
    :func:`ivlens.models.greedy.greedy_generate`."""
    tok = lm.tokenizer
    batch = pad_left(list(prompts), tok.pad_token_id).to(lm.device)
    sequences, first = greedy_generate(lm.model, batch.input_ids, batch.attention_mask, max_new_tokens,
                                       tok.eos_token_id, tok.pad_token_id)
    texts = tok.batch_decode(sequences[:, batch.input_ids.shape[1]:], skip_special_tokens=True)
    return texts, first


def candidate_logprobs(lm: LoadedModel, prompts: Sequence[Prompt], labels: Sequence[str],
                       memory_budget: int | None = None) -> torch.Tensor:
    """Teacher-forced log-probability of each label after each prompt, ``[len(prompts), len(labels)]`` float32:
    each prompt runs once and the labels' tokens are scored against its cached keys/values
    (:func:`ivlens.scoring.teacher_forced_scores`, which shares the labels' common first tokens)."""
    pairs = [(p.input_ids, label_token_ids(lm.tokenizer, p, lab)) for p in prompts for lab in labels]
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.tokenizer.eos_token_id
    scores = teacher_forced_scores(lm.model, [p for p, _ in pairs], [c for _, c in pairs], pad, memory_budget)
    return scores.logprob.view(len(prompts), len(labels))


def rank_of(scores: torch.Tensor, value: torch.Tensor) -> int:
    """The 1-based rank of ``value`` (a 0-d tensor) among ``scores: [k]``: ``1 + #{scores larger than it}`` (1 = top;
    ties count in its favour), as :func:`ivlens.patching.metrics.label_metrics` ranks."""
    return 1 + int((scores > value).sum())


def answer_columns(scores: torch.Tensor, candidates: AnswerCandidates, accepted: Sequence[str]) -> dict:
    """The ``answer_*`` columns of one row (see the module docstring) from its candidates' ``scores: [k]`` and the
    sample's accepted answers."""
    accepted_idx = [candidates.index(a) for a in accepted]
    best = max(accepted_idx, key=lambda i: scores[i].item())
    top = int(scores.argmax())
    rank = rank_of(scores, scores[best])
    return {"answer_logprob": scores[best].item(), "answer_rank": rank,
            "answer_rank_in_space": rank_of(scores[candidates.in_space], scores[best]),
            "answer_top1": rank == 1, "answer_ia": bool(candidates.in_space[top]),
            "answer_accuracy": top in accepted_idx}


def answer_scores(lm: LoadedModel, task: Task, item: EvalItem, candidates: AnswerCandidates) -> dict:
    """The ``answer_*`` columns of one row (see the module docstring)."""
    scores = candidate_logprobs(lm, [item.prompt], candidates.labels)[0]  # [k]
    return answer_columns(scores, candidates, item.sample.answers[item.scored])


def evaluate(lm: LoadedModel, task: Task, samples: Sequence[Sample], subtasks: Sequence[str] | None = None,
             fmt: PromptFormat = "raw", conditions: Sequence[str] = CONDITIONS, query_style: QueryStyle = "formatted",
             prefill: str | None = None, batch_size: int = 16, judge: Judge | None = None,
             max_new_tokens: int | None = None, progress: Callable[[int], None] | None = None,
             score: str = "first-token", warn_clashes: bool = True, memory_budget: int | None = None) -> pd.DataFrame:
    """One row per (sample, scored subtask, condition); see the module docstring for the metrics.

    ``score``: ``first-token`` (default) or ``answer`` (adds the ``answer_*`` columns: whole labels scored by
    their teacher-forced log-probability). Under ``first-token`` a warning names ``--score answer`` when the
    subtasks' labels share first tokens (``warn_clashes=False``: the caller warned once for all its chunks).
    ``memory_budget``: bytes for answer-level scoring's batches (``None``: :func:`ivlens.budget.resolve_memory_budget`'s
    default); results do not depend on it."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; use {' or '.join(SCORES)}")
    subtasks = list(subtasks or task.subtask_names)
    if warn_clashes:
        warn_first_token_clashes(lm.tokenizer, task, subtasks, fmt, score)
    candidates = {st: AnswerCandidates.of(task, st) for st in subtasks} if score == "answer" else {}
    items = build_items(lm, task, samples, subtasks, fmt, conditions, query_style, prefill)
    tok = lm.tokenizer
    if max_new_tokens is None:
        probe = items[0].prompt
        longest = max(len(ids) for ids in labels_token_ids(tok, probe, [lab for st in task.subtasks.values()
                                                                         for lab in st.label_space]))
        max_new_tokens = min(longest + 2, 16)
    rows = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        texts, logits = generate_batch(lm, [it.prompt for it in chunk], max_new_tokens)
        answer = _chunk_answer_scores(lm, chunk, candidates, memory_budget) if score == "answer" else {}
        logprobs = logits.log_softmax(-1)
        for it, text, lg, lp in zip(chunk, texts, logits, logprobs, strict=True):
            st = task.subtasks[it.scored]
            accepted = it.sample.answers[it.scored]
            first_ids = [ids[0] for ids in labels_token_ids(tok, it.prompt, accepted)]
            space_ids = label_space_first_ids(tok, it.prompt, st.label_space)
            best = max(first_ids, key=lambda i: lg[i].item())
            rank = rank_of(lg, lg[best])
            space_rank = rank_of(lg[space_ids], lg[best])
            ia = judge(text, st, it.sample) if judge else in_label_space(text, st.label_space)
            row = {
                "model": lm.name, "task": task.name, "sample": it.sample.index, "query": it.sample.query,
                "subtask": it.scored, "condition": it.condition, "format": fmt, "prompt": it.prompt.text,
                "answer": text, "answer_norm": normalize(text), "ia": bool(ia),
                "accuracy": any(matches(text, a) for a in accepted), "expected": " | ".join(accepted),
                "first_token_logit": lg[best].item(), "first_token_prob": lp[best].exp().item(),
                "first_token_rank": rank, "first_token_rank_in_space": space_rank,
                "first_token_top1": rank == 1, "score": score,
            }
            if score == "answer":
                row.update(answer_columns(answer[id(it)], candidates[it.scored], accepted))
            if task.is_contrastive:
                other = task.other(it.scored)
                row["ia_other"] = in_label_space(text, task.subtasks[other].label_space)
                row["acc_other"] = any(matches(text, a) for a in it.sample.answers[other])
            rows.append(row)
        if progress:
            progress(len(chunk))
    return pd.DataFrame(rows)


def _chunk_answer_scores(lm: LoadedModel, chunk: Sequence[EvalItem], candidates: dict[str, AnswerCandidates],
                         memory_budget: int | None) -> dict[int, torch.Tensor]:
    """Candidate scores ``[k]`` of every item of a chunk (keyed by ``id(item)``): the items of one scored subtask
    share their candidates, so their prompts run together."""
    out = {}
    for st in dict.fromkeys(it.scored for it in chunk):
        items = [it for it in chunk if it.scored == st]
        scores = candidate_logprobs(lm, [it.prompt for it in items], candidates[st].labels, memory_budget)
        out.update({id(it): s for it, s in zip(items, scores, strict=True)})
    return out


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Per model × task × subtask × condition: n, IA, accuracy (of the generated answer), top-1 (rank 1) and mean
    reciprocal rank (``1/rank``): of the first token, or under answer-level scoring of the whole label among the
    candidates (then also ``answer_ia`` and ``answer_accuracy``, from the label scores)."""
    answer = "answer_rank" in results.columns
    rank = results["answer_rank"] if answer else results["first_token_rank"]
    df = results.assign(rr=1.0 / rank, top1=rank == 1)
    extra = {"answer_ia": ("answer_ia", "mean"), "answer_accuracy": ("answer_accuracy", "mean")} if answer else {}
    agg = df.groupby(["model", "task", "subtask", "condition"], sort=False).agg(
        n=("accuracy", "size"), ia=("ia", "mean"), accuracy=("accuracy", "mean"),
        top1=("top1", "mean"), mrr=("rr", "mean"), **extra,
    ).reset_index()
    return agg


def instruction_decides(results: pd.DataFrame) -> pd.DataFrame:
    """Contrastive tasks: per model × task, the share of queries for which *each* subtask's instruction
    yields that subtask's correct answer (the instruction decides the answer)."""
    inst = results[results["condition"] == "instructed"]
    if inst.empty:
        return pd.DataFrame(columns=["model", "task", "n", "decides"])
    per_query = inst.groupby(["model", "task", "sample"])["accuracy"].agg(["all", "size"]).reset_index()
    per_query = per_query[per_query["size"] == 2]
    return per_query.groupby(["model", "task"], sort=False).agg(n=("all", "size"), decides=("all", "mean")).reset_index()
