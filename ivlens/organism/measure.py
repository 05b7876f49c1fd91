"""Measure what an organism does: instructed accuracy, the contrastive choice, plain-text recall and
instruction-vector (IV) transfer by single-layer residual patching.

Accuracy and recall are teacher-forced scores with plain forwards; IV transfer goes through ivlens' own
patching engine (:func:`ivlens.patching.sweep.patch_sweep`). All forwards are fp32, no dropout.

Scoring an answer. For a prompt ``p`` (token ids, BOS first) and a candidate answer ``a`` (the tokens of
``" " + label``), one teacher-forced forward over ``p ⧺ a`` gives

- ``greedy(p, a)``: every answer token is the argmax at its position (= greedy decoding produces ``a``);
- ``logp(p, a) = Σ_i log softmax(logits[|p|-1+i])[a_i]``.

An answer is *correct* if ``greedy`` holds for one of the query's accepted answers.

Instruction-vector patching (the paper's IV transfer). With ``resid_post[l]`` the output of decoder layer
``l`` (``[batch, pos, d_model]``)::

    iv_l = resid_post[l](instruction-only prompt)[T_inst]          # T_inst = its last token
    patched: resid_post[l](query-only prompt)[t] := iv_l           # t = BOS (0), first token (1) or last

and the first answer token is read at the last position of the query-only prompt (``{Field}: {q}. Answer:``
"formatted", or the bare ``{q}``). Reported per subtask, layer, target style and position:

- ``ia_top1``: share of queries whose top-1 first answer token belongs to the subtask's label space (the paper's IA
  read at the top-1 token, as patching's ``ia_top1``);
- ``exact``: share whose first answer token is the first token of an accepted answer (the instructed answer
  top-1);
- ``flip``: among queries whose *unpatched* answer lies outside the label space, the share moved inside.
"""

from __future__ import annotations

import logging

from ivlens.models.load import LoadedModel
from ivlens.organism.data import RECALL_PROMPTS, chat_prompt, raw_prompt, split_rephrasings
from ivlens.organism.tokenizer import encode
from ivlens.scoring import teacher_forced_scores
from ivlens.tasks.schema import Task

log = logging.getLogger(__name__)

TARGET_STYLES = ("formatted", "bare")


def score_answers(model, tokenizer, prompts: list[list[int]], answers: list[list[int]]
                  ) -> tuple[list[bool], list[float]]:
    """``(greedy, logp)`` of each ``answers[i]`` after ``prompts[i]`` (see the module docstring), by
    :func:`ivlens.scoring.teacher_forced_scores` (each distinct prompt runs once)."""
    scores = teacher_forced_scores(model, prompts, answers, tokenizer.pad_token_id)
    return scores.greedy.tolist(), scores.logprob.tolist()


def _answer_ids(tokenizer, label: str) -> list[int]:
    return tokenizer(" " + label, add_special_tokens=False).input_ids


class _AnswerBatch:
    """The teacher-forced answers of one measurement, scored in one :func:`score_answers` call: a prompt that
    several figures need (the raw prompt's accepted answers and its contrastive pair) runs once, and the model runs
    a few large batches instead of a dozen small ones (the measurement's cost is mostly per forward, not per row).

    :meth:`correct` and :meth:`logp` register requests and return handles; after :meth:`run`, :meth:`result`
    gives each handle's value."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.prompts: list[list[int]] = []
        self.answers: list[list[int]] = []
        #: per request: its kind, the prompt each of its (prompt, answer) pairs belongs to, its number of prompts,
        #: and the index of its first pair
        self._requests: list[tuple[str, list[int], int, int]] = []
        self._greedy: list[bool] = []
        self._logp: list[float] = []

    def _add(self, kind: str, prompts: list[list[int]], answers: list[list[int]], owner: list[int], n: int) -> int:
        self._requests.append((kind, owner, n, len(self.prompts)))
        self.prompts += prompts
        self.answers += answers
        return len(self._requests) - 1

    def correct(self, prompts: list[list[int]], accepted: list[tuple[str, ...]]) -> int:
        """Request, per prompt: does greedy decoding yield one of its accepted answers (``list[bool]``)?"""
        flat_p, flat_a, owner = [], [], []
        for i, (p, acc) in enumerate(zip(prompts, accepted, strict=True)):
            for a in acc:
                flat_p.append(p)
                flat_a.append(_answer_ids(self.tokenizer, a))
                owner.append(i)
        return self._add("correct", flat_p, flat_a, owner, len(prompts))

    def logp(self, prompts: list[list[int]], labels: list[str]) -> int:
        """Request, per prompt: ``logp(prompt, label)`` (``list[float]``)."""
        answers = [_answer_ids(self.tokenizer, a) for a in labels]
        return self._add("logp", list(prompts), answers, list(range(len(prompts))), len(prompts))

    def run(self, model) -> None:
        """Score every request's pairs (identical prompts run once)."""
        self._greedy, self._logp = score_answers(model, self.tokenizer, self.prompts, self.answers)

    def result(self, handle: int) -> list:
        """A request's value after :meth:`run`."""
        kind, owner, n, first = self._requests[handle]
        rows = range(first, first + len(owner))
        if kind == "logp":
            return [self._logp[r] for r in rows]
        ok = [False] * n
        for i, r in zip(owner, rows, strict=True):
            ok[i] |= self._greedy[r]
        return ok


def _share(ok: list[bool]) -> float:
    return sum(ok) / max(len(ok), 1)


def instructed_accuracy(model, tokenizer, task: Task, queries: list[str]) -> dict:
    """Per subtask: accuracy with the paper's instruction in the raw and chat formats, with held-out
    (never trained) rephrasings, and the contrastive figures; per task: ``decides``.

    ``decides``: share of queries answered correctly under *both* subtasks' instructions (the instruction,
    not the query, picks the answer). ``contrastive``: share of (query, subtask) with
    ``logp(instructed answer) > logp(other subtask's answer)``; ``contrastive_margin`` its mean difference.
    Every answer of the call is scored in one batch (:class:`_AnswerBatch`).
    """
    samples = [s for s in task.samples if s.query in set(queries)]
    held_reph = split_rephrasings(task)
    out: dict = {"n_queries": len(samples)}
    batch = _AnswerBatch(tokenizer)
    handles: dict[str, dict[str, int]] = {}
    for sub, spec in task.subtasks.items():
        other = task.other(sub)
        raw = [encode(tokenizer, raw_prompt(spec.instruction, task.field, s.query)) for s in samples]
        chat = [encode(tokenizer, chat_prompt(tokenizer, spec.instruction, task.field, s.query)) for s in samples]
        unseen = held_reph[sub]["heldout"]
        reph = [encode(tokenizer, raw_prompt(unseen[i % len(unseen)], task.field, s.query))
                for i, s in enumerate(samples)]
        accepted = [s.answers[sub] for s in samples]
        handles[sub] = {
            "raw": batch.correct(raw, accepted), "chat": batch.correct(chat, accepted),
            "reph": batch.correct(reph, accepted),
            # contrastive choice: instructed answer vs the other subtask's answer, same prompt
            "mine": batch.logp(raw, [s.answer(sub) for s in samples]),
            "theirs": batch.logp(raw, [s.answer(other) for s in samples]),
        }
    batch.run(model)
    correct_raw: dict[str, list[bool]] = {}
    wins, margins = [], []
    for sub, h in handles.items():
        correct_raw[sub] = batch.result(h["raw"])
        lp_mine, lp_theirs = batch.result(h["mine"]), batch.result(h["theirs"])
        wins += [a > b for a, b in zip(lp_mine, lp_theirs, strict=True)]
        margins += [a - b for a, b in zip(lp_mine, lp_theirs, strict=True)]
        out[sub] = {
            "acc": _share(correct_raw[sub]),
            "acc_chat": _share(batch.result(h["chat"])),
            "acc_unseen_rephrasings": _share(batch.result(h["reph"])),
        }
    a, b = list(task.subtasks)
    both = [x and y for x, y in zip(correct_raw[a], correct_raw[b], strict=True)]
    out["decides"] = _share(both)
    out["contrastive"] = _share(wins)
    out["contrastive_margin"] = sum(margins) / max(len(margins), 1)
    return out


def recall(model, tokenizer, task: Task, queries: list[str]) -> dict[str, float]:
    """Plain-text recall per subtask: ``RECALL_PROMPTS[sub]`` continued greedily with an accepted answer (every
    subtask's prompts in one batch)."""
    samples = [s for s in task.samples if s.query in set(queries)]
    batch = _AnswerBatch(tokenizer)
    handles = {sub: batch.correct([encode(tokenizer, RECALL_PROMPTS[sub].format(q=s.query)) for s in samples],
                                  [s.answers[sub] for s in samples])
               for sub in task.subtasks}
    batch.run(model)
    return {sub: _share(batch.result(h)) for sub, h in handles.items()}


# --------------------------------------------------------------------------------- IV patching
#: patch targets in the query-only prompt: the BOS (index 0), the first token after it, the last token
IV_POSITIONS = {"bos": 0, "first": "first", "last": "last"}


def iv_transfer(lm: LoadedModel, task: Task, samples: list[int] | None = None) -> dict:
    """Single-layer IV transfer per subtask, target style and position, through ivlens' patching engine
    (:func:`ivlens.patching.sweep.patch_sweep`, transfer mode; see the module docstring for ``ia_top1``, ``exact``
    and ``flip``) and the unpatched baseline. ``exact`` accepts every answer of a query (merged duplicates have
    several)."""
    from ivlens.patching.sweep import patch_sweep
    from ivlens.tasks.prompts import instructed_prompt, label_token_ids

    sample_ids = list(range(len(task.samples))) if samples is None else list(samples)
    positions = ",".join(str(v) for v in IV_POSITIONS.values())
    pos_name = {str(v): k for k, v in IV_POSITIONS.items()}
    out: dict = {"n_queries": len(sample_ids), "subtasks": {}, "unpatched": {}}
    for sub, spec in task.subtasks.items():
        accepted = {}
        for i in sample_ids:
            s = task.samples[i]
            prompt = instructed_prompt(lm.tokenizer, task, s, spec.instruction)
            accepted[i] = {label_token_ids(lm.tokenizer, prompt, a)[0] for a in s.answers[sub]}
        res = out["subtasks"].setdefault(sub, {"curves": {}, "unpatched": {}})
        for style in TARGET_STYLES:
            sweep = patch_sweep(lm, task, sub, layers="single", positions=positions, samples=sample_ids,
                                target=style, chunk_size=len(sample_ids))
            base = sweep.baselines[sweep.baselines.run == "target"].set_index("sample")
            rows = sweep.rows.assign(exact=[int(t) in accepted[i] for i, t in zip(sweep.rows["sample"],
                                                                                   sweep.rows["top1"], strict=True)])
            base_exact = [int(t) in accepted[i] for i, t in zip(base.index, base["top1"], strict=True)]
            res["unpatched"][style] = {"ia_top1": float(base["ia_top1"].mean()), "exact": sum(base_exact) / len(base)}
            out["unpatched"].setdefault(style, {})[sub] = float(base["ia_top1"].mean())
            outside = set(base.index[~base["ia_top1"].astype(bool)])
            for position, grp in rows.groupby("position", sort=False):
                curve = []
                for layer, g in grp.groupby("first_layer"):
                    moved = g[g["sample"].isin(outside)]
                    curve.append({"layer": int(layer), "ia_top1": float(g["ia_top1"].mean()),
                                  "exact": float(g["exact"].mean()),
                                  "flip": float(moved["ia_top1"].mean()) if len(moved) else None,
                                  "n_outside": len(moved)})
                res["curves"][f"{style}/{pos_name[position]}"] = curve
    return out


#: a configuration tests IV transfer only where at least this share of the queries answers outside the
#: subtask's label space unpatched (otherwise there is nothing to move)
MIN_OUTSIDE_SHARE = 0.1


def testable_configs(iv: dict, subtask: str) -> list[tuple[str, dict]]:
    """``(target/position, curve point)`` of every single-layer patch of ``subtask`` in ``iv`` (an
    :func:`iv_transfer` result) that has queries to move: ``n_outside >= MIN_OUTSIDE_SHARE * n_queries``."""
    res = iv["subtasks"][subtask]
    return [(target, c) for target, curve in res["curves"].items() for c in curve
            if c["flip"] is not None and c.get("n_outside", iv["n_queries"]) >= MIN_OUTSIDE_SHARE * iv["n_queries"]]


def measure_stage(lm: LoadedModel, tasks: dict[str, Task], split: dict[str, dict[str, list[str]]],
                  iv: bool = True, queries: int | None = None) -> dict:
    """All figures of one stage: per task, per split (train / heldout) accuracy and recall; IV transfer over all
    queries. ``queries``: measure only the first ``queries`` of each split (IV transfer on their samples)."""
    model, tokenizer = lm.model.eval(), lm.tokenizer
    out = {}
    for name, task in tasks.items():
        parts = {part: split[name][part][:queries] for part in ("train", "heldout")}
        out[name] = {
            part: {"instructed": instructed_accuracy(model, tokenizer, task, chosen),
                   "recall": recall(model, tokenizer, task, chosen)}
            for part, chosen in parts.items()
        }
        if iv:
            measured = set(parts["train"]) | set(parts["heldout"])
            samples = None if queries is None else [i for i, s in enumerate(task.samples) if s.query in measured]
            out[name]["iv"] = iv_transfer(lm, task, samples)
    return out
