"""Patch sweeps: prompts, the engine, metrics and streamed results for one task and subtask.

Modes (see ``docs/patching.md``):

- ``transfer`` (the paper's): source = the subtask's **instruction-only** prompt, target = the **query-only**
  prompt (``target="bare"``: the bare query, the paper's default; ``"formatted"``: ``"Adjective: big. Answer:"``).
  The label is the subtask's answer; where the task has a second subtask its answer is the alternative label.
- ``contrastive`` (two-subtask tasks): source = subtask A's instruction-only prompt, target = subtask B's full
  instructed prompt, patched at its ``t_inst``; label = A's answer, alternative = B's, so ``logit_diff`` (A − B)
  measures whether the answer flips.

Scores (``score``): ``first-token`` (default) measures the label's first token at the last position
(:func:`ivlens.patching.metrics.label_metrics`); ``answer`` scores every candidate label (the union of the
subtasks' label spaces) by its teacher-forced log-probability with the patch in place and ranks the label among
them (:func:`ivlens.patching.metrics.answer_metrics`); the columns keep their names. Use ``answer`` when labels
share their first token (numbers with many tokenizers), where first-token metrics cannot tell labels apart.

In both modes the *instructed run* is subtask A's instructed prompt and the *target-only run* the unpatched target.
With ``source_model`` the IVs come from another checkpoint of the same shape.

Results stream to a run directory as Parquet unit files, one per (model, chunk of samples), written atomically after
the chunk finishes; a resumed sweep skips finished chunks, so it ends with exactly the rows of an uninterrupted run
(the chunks are the units of work of :mod:`ivlens.units`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ivlens.budget import resolve_memory_budget
from ivlens.models.load import LoadedModel
from ivlens.ndif import local_model, through_nnsight
from ivlens.runs import RunDir
from ivlens.specs import PatchMode, Score
from ivlens.tasks import Task, TaskError, load_task, require_contrastive
from ivlens.tasks.prompts import (
    AnswerCandidates,
    Prompt,
    instructed_prompt,
    instruction_prompt,
    label_token_ids,
    query_prompt,
)
from ivlens.tasks.selection import sample_indices, split_queries
from ivlens.tasks.validate import warn_first_token_clashes
from ivlens.units import TablePieces, Unit, UnitLoop, unit_key

from .engine import (
    CleanRun,
    EngineStats,
    RowSpec,
    clean_answer_logprobs,
    clean_run,
    patched_answer_logprobs,
    patched_metrics,
    source_vectors,
    unembed_device,
)
from .linear import (
    ESTIMATED,
    LINEAR_CHOICES,
    FirstOrder,
    estimate_columns,
    estimated_effect,
    first_order_terms,
    linear_on,
)
from .metrics import answer_metrics, deltas, label_metrics
from .plan import PatchPlan, layer_set_label, resolve_position
from .reach import attention_windows, reaches_logits
from .screen import TABLE as SCREEN
from .screen import run_estimates, screen_table, screened_sets

log = logging.getLogger(__name__)

SCORES = ("first-token", "answer")
TABLE = "patch"
BASELINES = "baselines"


@dataclass(frozen=True)
class SamplePrompts:
    """The prompts and label tokens of one sample for one model."""

    sample: int
    query: str
    target: Prompt
    instructed: Prompt
    label: str
    label_token: int
    alt_label: str | None
    alt_token: int
    positions: tuple[int, ...]  # resolved plan positions, token indices into target


@dataclass
class SweepResult:
    """``rows``: one row per (model, sample, layer set, position); ``baselines``: target-only and instructed
    metrics per (model, sample); ``stats``: engine work counters per model name; ``screen``: with ``--screen``,
    the ranking of every layer set by its linear estimate (:func:`ivlens.patching.screen.screen_table`)."""

    rows: pd.DataFrame
    baselines: pd.DataFrame
    stats: dict[str, EngineStats] = field(default_factory=dict)
    run: RunDir | None = None
    screen: pd.DataFrame = field(default_factory=pd.DataFrame)


def starts_with_bos(tok, prompt: Prompt) -> bool:
    """Whether ``prompt`` begins with the tokenizer's BOS and has a token after it (what the position names
    ``bos`` / ``first`` resolve against)."""
    return tok.bos_token_id is not None and len(prompt.input_ids) > 1 and prompt.input_ids[0] == tok.bos_token_id


def prepare(lm: LoadedModel, task: Task, subtask: str, plan: PatchPlan, sample_ids: Sequence[int], mode: PatchMode,
            target: str, fmt: str) -> tuple[list[SamplePrompts], str]:
    """Target/instructed prompts and label tokens per sample, plus the source instruction text."""
    tok = lm.tokenizer
    sub_a = task.subtask(subtask)
    other = task.other(subtask) if task.is_contrastive else None
    if mode == "contrastive" and other is None:
        raise TaskError(f"contrastive mode needs a task with two subtasks; {task.name!r} has {len(task.subtasks)}")
    if mode not in ("transfer", "contrastive"):
        raise ValueError(f"unknown mode {mode!r}; use transfer or contrastive")
    if "t_inst" in plan.positions and mode != "contrastive":
        raise ValueError("position t_inst needs a target with an instruction: use --mode contrastive")
    out = []
    for i in sample_ids:
        s = task.samples[i]
        instructed = instructed_prompt(tok, task, s, sub_a.instruction, fmt)
        if mode == "transfer":
            tgt = query_prompt(tok, task, s, fmt, query_style=target)
        else:
            tgt = instructed_prompt(tok, task, s, task.subtask(other).instruction, fmt)
        label = s.answer(subtask)
        alt = s.answer(other) if other is not None else None
        positions = tuple(resolve_position(p, len(tgt), t_inst=tgt.t_inst, has_bos=starts_with_bos(tok, tgt))
                          for p in plan.positions)
        out.append(SamplePrompts(
            sample=i, query=s.query, target=tgt, instructed=instructed, label=label,
            label_token=label_token_ids(tok, instructed, label)[0], alt_label=alt,
            alt_token=label_token_ids(tok, instructed, alt)[0] if alt is not None else -1, positions=positions))
    return out, sub_a.instruction


def label_space_tokens(lm: LoadedModel, task: Task, subtask: str, instructed: Prompt) -> torch.Tensor:
    """First tokens of the subtask's label space, as answers to ``instructed`` (a representative prompt: the
    separator before the answer is the same for every sample of a format)."""
    labels = task.subtask(subtask).label_space or tuple(
        a for s in task.samples for a in s.answers.get(subtask, ()))
    ids = sorted({label_token_ids(lm.tokenizer, instructed, lab)[0] for lab in labels})
    return torch.tensor(ids, dtype=torch.long)


def pad_token_id_of(lm: LoadedModel) -> int:
    """The id the engine pads with: the tokenizer's pad token, else its EOS."""
    tok = lm.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def clean_bytes_per_sample(lm: LoadedModel, n_tokens: int) -> int:
    """Bytes a target's recorded clean run holds: ``resid_post`` and keys/values of every layer."""
    a = lm.adapter
    per_token = a.d_model + 2 * a.n_kv_heads * a.d_head
    return a.n_layers * n_tokens * per_token * a.embed.weight.element_size()


def engine_passes(lm: LoadedModel, prompts: list[SamplePrompts], memory_budget: int,
            sequences_per_sample: int = 1) -> list[list[int]]:
    """Split a chunk's samples into engine passes whose recorded clean runs (``sequences_per_sample`` recorded
    sequences per sample) take at most a quarter of the budget (rows of different targets never
    share a trie state, so nothing is lost)."""
    out: list[list[int]] = [[]]
    width = 0
    for b, p in enumerate(prompts):
        w = max(width, len(p.target), len(p.instructed))
        if out[-1] and clean_bytes_per_sample(lm, w) * sequences_per_sample * (len(out[-1]) + 1) > memory_budget // 4:
            out.append([])
            w = max(len(p.target), len(p.instructed))
        out[-1].append(b)
        width = w
    return out


def _chunk_rows(lm: LoadedModel, prompts: list[SamplePrompts], plan: PatchPlan, ivs: torch.Tensor,
                space: torch.Tensor, stats: EngineStats, batch_size: int | None,
                on_rows: Callable[[int], None] | None, backend: str = "torch",
                memory_budget: int | None = None, candidates: AnswerCandidates | None = None,
                terms: FirstOrder | None = None) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Run one chunk of samples: columns of the patched rows (sample-major, then position, then layer set) and
    records of the baselines. The samples run in passes bounded by ``memory_budget``. With ``candidates`` the rows
    are scored at the answer level; with ``terms`` (the chunk's per-layer first-order terms, in ``prompts``
    order) they carry their linear estimates."""
    if through_nnsight(lm):  # --remote: every forward is a trace of the nnsight program
        return _nnsight_chunk_rows(lm, prompts, plan, ivs, space, stats, batch_size, on_rows, memory_budget)
    run_rows = _nnsight_rows(lm) if backend == "nnsight" else patched_metrics
    budget = memory_budget if memory_budget is not None else resolve_memory_budget(None, lm.device)
    parts: list[dict[str, np.ndarray]] = []
    base = []
    for idx in engine_passes(lm, prompts, budget):
        cols, b_recs = _pass_rows(lm, [prompts[b] for b in idx], plan, ivs, space, stats, batch_size, on_rows,
                                  run_rows, budget, candidates, terms.take(idx) if terms is not None else None)
        parts.append(cols)
        base.extend(b_recs)
    cols = {k: np.concatenate([c[k] for c in parts]) for k in parts[0]}
    base.sort(key=lambda r: r["run"] != "target")  # target-only runs first, then instructed (as one pass gives)
    return cols, base


def _nnsight_rows(lm: LoadedModel):
    """``--backend nnsight``: the patched rows through the program ``--remote`` sends
    (:func:`ivlens.patching.nnsight_rows.patched_metrics_nnsight`), run here on ``lm`` wrapped by
    :func:`ivlens.ndif.local_model`; called as :func:`~ivlens.patching.engine.patched_metrics` is."""
    from .nnsight_rows import patched_metrics_nnsight

    model, udev = local_model(lm), unembed_device(lm.adapter)

    def run_rows(adapter, clean: CleanRun, ivs: torch.Tensor, rows: Sequence[RowSpec], label: torch.Tensor,
                 alt: torch.Tensor | None = None, space: torch.Tensor | None = None, **kw) -> dict[str, torch.Tensor]:
        return patched_metrics_nnsight(model, clean.batch, ivs, rows, label, alt, space, device=udev, **kw)

    return run_rows


def _nnsight_chunk_rows(lm: LoadedModel, prompts: list[SamplePrompts], plan: PatchPlan, ivs: torch.Tensor,
                        space: torch.Tensor, stats: EngineStats, batch_size: int | None,
                        on_rows: Callable[[int], None] | None, memory_budget: int | None):
    """One chunk through the nnsight programs (:mod:`ivlens.patching.nnsight_rows`): one pass, rows per trace
    from the budget."""
    budget = memory_budget if memory_budget is not None else resolve_memory_budget(None, lm.device)
    cols, base = _pass_rows(lm, prompts, plan, ivs, space, stats, batch_size, on_rows, None, budget)
    base.sort(key=lambda r: r["run"] != "target")
    return cols, base


def _pass_rows(lm: LoadedModel, prompts: list[SamplePrompts], plan: PatchPlan, ivs: torch.Tensor,
               space: torch.Tensor, stats: EngineStats, batch_size: int | None,
               on_rows: Callable[[int], None] | None, run_rows, budget: int,
               candidates: AnswerCandidates | None = None, terms: FirstOrder | None = None,
               ) -> tuple[dict[str, np.ndarray], list]:
    n_sets, n_pos, B = len(plan.layer_sets), len(plan.positions), len(prompts)
    if through_nnsight(lm):
        from .nnsight_rows import first_token_scores_nnsight

        got, base_t, base_i = first_token_scores_nnsight(
            lm, [p.target.input_ids for p in prompts], [p.instructed.input_ids for p in prompts],
            [p.positions for p in prompts], plan.layer_sets, ivs, torch.tensor([p.label_token for p in prompts]),
            torch.tensor([p.alt_token for p in prompts]), space, pad_token_id_of(lm), stats=stats, batch_size=batch_size,
            memory_budget=budget, on_rows=on_rows)
    elif candidates is None:
        got, base_t, base_i = _first_token_scores(lm, prompts, plan, ivs, space, stats, batch_size, on_rows,
                                                  run_rows, budget)
    else:
        got, base_t, base_i = _answer_scores(lm, prompts, plan, ivs, candidates, stats, batch_size, on_rows, budget)
    per_sample = n_pos * n_sets
    row_b = torch.arange(B).repeat_interleave(per_sample)  # [rows]: the target of each row
    got.update(deltas(got, {k: v[row_b] for k, v in base_t.items()}, "target"))
    got.update(deltas(got, {k: v[row_b] for k, v in base_i.items()}, "instructed"))

    def per_b(values) -> np.ndarray:  # one value per sample, repeated over its rows
        return np.repeat(np.asarray(values, dtype=object if isinstance(values[0], str | None) else None),
                         per_sample)

    labels = np.array([layer_set_label(x) for x in plan.layer_sets], dtype=object)
    cols: dict[str, np.ndarray] = {
        "sample": per_b([p.sample for p in prompts]),
        "query": per_b([p.query for p in prompts]),
        "label": per_b([p.label for p in prompts]),
        "alt_label": per_b([p.alt_label for p in prompts]),
        "label_token": per_b([p.label_token for p in prompts]),
        "position": np.tile(np.repeat(np.array([str(x) for x in plan.positions], dtype=object), n_sets), B),
        "pos_index": np.repeat(np.array([p.positions for p in prompts], dtype=np.int64).reshape(-1), n_sets),
        "n_tokens": per_b([len(p.target) for p in prompts]),
        "layers": np.tile(labels, B * n_pos),
        "set_size": np.tile(np.array([len(x) for x in plan.layer_sets], dtype=np.int64), B * n_pos),
        "first_layer": np.tile(np.array([x[0] for x in plan.layer_sets], dtype=np.int64), B * n_pos),
    }
    # False: no later computation reads the patch, its effect is 0 by construction (summaries do not rank it)
    cols["reaches_logits"] = reaches_logits(attention_windows(lm.model, lm.n_layers), cols["first_layer"],
                                            cols["pos_index"], cols["n_tokens"])
    for k, v in got.items():  # floats as float64, as Python floats were before
        cols[k] = v.double().numpy() if v.is_floating_point() else v.numpy()
    if terms is not None:
        cols.update(estimate_columns(terms, plan.layer_sets, cols))
    base = []
    for name, m in (("target", base_t), ("instructed", base_i)):
        mc = {k: v.numpy() for k, v in m.items()}
        for b, p in enumerate(prompts):
            rec = {"sample": p.sample, "query": p.query, "label": p.label, "run": name,
                   "n_tokens": len(p.target if name == "target" else p.instructed)}
            rec.update({k: v[b].item() for k, v in mc.items()})
            base.append(rec)
    return cols, base


def _first_token_scores(lm: LoadedModel, prompts: list[SamplePrompts], plan: PatchPlan, ivs: torch.Tensor,
                        space: torch.Tensor, stats: EngineStats, batch_size: int | None,
                        on_rows: Callable[[int], None] | None, run_rows, budget: int):
    """Metrics of the label's first token: patched rows (sample, position, layer set order), target-only and
    instructed baselines per sample."""
    adapter, pad = lm.adapter, pad_token_id_of(lm)
    clean = clean_run(adapter, [p.target.input_ids for p in prompts], pad, record=True, stats=stats)
    instr = clean_run(adapter, [p.instructed.input_ids for p in prompts], pad, record=False, stats=stats)
    specs = [RowSpec(b, 0, layers, tok_idx) for b, p in enumerate(prompts)
             for tok_idx in p.positions for layers in plan.layer_sets]
    label = torch.tensor([p.label_token for p in prompts])
    alt = torch.tensor([p.alt_token for p in prompts])
    got = run_rows(adapter, clean, ivs, specs, label, alt, space, batch_size=batch_size, memory_budget=budget,
                   stats=stats, on_rows=on_rows)
    base_t = {k: v.cpu() for k, v in label_metrics(clean.last_logits, label.to(clean.last_logits.device),
                                                   alt.to(clean.last_logits.device),
                                                   space.to(clean.last_logits.device)).items()}
    base_i = {k: v.cpu() for k, v in label_metrics(instr.last_logits, label.to(instr.last_logits.device),
                                                   alt.to(instr.last_logits.device),
                                                   space.to(instr.last_logits.device)).items()}
    return got, base_t, base_i


def _answer_scores(lm: LoadedModel, prompts: list[SamplePrompts], plan: PatchPlan, ivs: torch.Tensor,
                   candidates: AnswerCandidates, stats: EngineStats, batch_size: int | None,
                   on_rows: Callable[[int], None] | None, budget: int):
    """Answer-level metrics: every candidate label teacher-forced after each sample's target (and instructed
    prompt); the patched rows score all ``k`` candidates with the patch in place
    (:func:`~ivlens.patching.engine.patched_answer_logprobs`: each patched prompt once, the candidates against its
    keys/values), and :func:`~ivlens.patching.metrics.answer_metrics` ranks the label among them."""
    adapter, pad, tok = lm.adapter, pad_token_id_of(lm), lm.tokenizer

    def conts(prompt: Prompt) -> list[tuple[int, ...]]:
        return [label_token_ids(tok, prompt, c) for c in candidates.labels]

    clean = clean_run(adapter, [p.target.input_ids for p in prompts], pad, record=True, stats=stats)
    t_conts = [conts(p.target) for p in prompts]
    specs = [RowSpec(b, 0, layers, tok_idx) for b, p in enumerate(prompts)
             for tok_idx in p.positions for layers in plan.layer_sets]
    scores = patched_answer_logprobs(adapter, clean, ivs, specs, t_conts, batch_size=batch_size,
                                     memory_budget=budget, stats=stats, on_rows=on_rows)  # [rows, k]
    base_scores_t = clean_answer_logprobs(adapter, clean, t_conts, budget, stats)
    del clean
    instr = clean_run(adapter, [p.instructed.input_ids for p in prompts], pad, record=True, stats=stats)
    base_scores_i = clean_answer_logprobs(adapter, instr, [conts(p.instructed) for p in prompts], budget, stats)
    del instr
    label = torch.tensor([candidates.index(p.label) for p in prompts])
    alt = torch.tensor([candidates.index(p.alt_label) for p in prompts])
    row_b = torch.tensor([s.target for s in specs], dtype=torch.long)
    got = answer_metrics(scores, label[row_b], alt[row_b], candidates.in_space)
    base_t = answer_metrics(base_scores_t, label, alt, candidates.in_space)
    base_i = answer_metrics(base_scores_i, label, alt, candidates.in_space)
    return got, base_t, base_i


def _check_linear(setting: str, screen: int | None, score: str, remote: bool) -> None:
    """Refuse a linear estimate (or a screen, which needs one) where it is not defined."""
    if setting not in LINEAR_CHOICES:
        raise ValueError(f"unknown --linear-estimate {setting!r}; use {', '.join(LINEAR_CHOICES)}")
    if screen is not None and screen < 1:
        raise ValueError(f"--screen {screen}: give the number of sets to keep per size, at least 1")
    wants = setting == "on" or screen is not None
    what = "--screen" if screen is not None else "--linear-estimate on"
    if screen is not None and setting == "off":
        raise ValueError("--screen ranks the sets by their linear estimate: drop --linear-estimate off")
    if wants and score == "answer":
        raise ValueError(f"{what} needs the first-token score (the estimate is the gradient of the label's logit); "
                         "drop --score answer")
    if wants and remote:
        raise ValueError(f"{what} runs the estimate's backward pass on the local engine; drop --remote")


def _linear_on(setting: str, screen: int | None, plan: PatchPlan, layers, score: str, lm: LoadedModel) -> bool:
    """:func:`ivlens.patching.linear.linear_on` for one model's plan (the score and backend were checked already);
    a screen needs sets of two or more layers."""
    if screen is not None and not any(len(s) >= 2 for s in plan.layer_sets):
        raise ValueError(f"--screen ranks sets of two or more layers; --layers {layers!r} has none: use pairs, "
                         "triplets, N-sets (e.g. 4-sets) or explicit sets")
    return linear_on(setting, screen, plan.layer_sets, score=score, remote=through_nnsight(lm))


def _ivs(s_lm: LoadedModel, instruction: str, fmt: str, stats: EngineStats) -> torch.Tensor:
    """The IVs of the source instruction, ``[1, layer, d_model]``."""
    src_ids = instruction_prompt(s_lm.tokenizer, instruction, fmt).input_ids
    if through_nnsight(s_lm):
        from .nnsight_rows import source_vectors_nnsight

        return source_vectors_nnsight(s_lm, [src_ids], pad_token_id_of(s_lm), stats=stats)
    return source_vectors(s_lm.adapter, [src_ids], pad_token_id_of(s_lm), stats=stats)


def _terms(lm: LoadedModel, prompts: list[SamplePrompts], ivs: torch.Tensor, stats: EngineStats) -> FirstOrder:
    """Per-layer first-order terms of the samples' targets (:func:`ivlens.patching.linear.first_order_terms`)."""
    return first_order_terms(lm.adapter, [p.target.input_ids for p in prompts], [p.positions for p in prompts],
                             ivs[0], torch.tensor([p.label_token for p in prompts]),
                             torch.tensor([p.alt_token for p in prompts]), stats=stats)


def _screen(screens: TablePieces, key: str, terms: FirstOrder, prompts: list[SamplePrompts], plan: PatchPlan,
            k: int, model: str, effect: str) -> pd.DataFrame:
    """The model's ranking of every set (:func:`ivlens.patching.screen.screen_table`): the piece ``key`` of
    ``screens`` (the ``screen`` table's unit files), when a resumed run has it, else computed from ``terms`` (of
    ``prompts``, every sample) and written there (before any chunk, so the chunks run the same sets)."""
    if screens.has(key):
        return screens.piece(SCREEN, key)
    eff = estimated_effect(effect)
    is_last = np.array([[t == len(p.target) - 1 for t in p.positions] for p in prompts], dtype=bool)
    est = run_estimates(getattr(terms, ESTIMATED[eff][2]), plan.layer_sets, is_last)  # [samples, positions, sets]
    table = screen_table(est, plan.layer_sets, plan.positions, k, model, eff)
    screens.write(key, {SCREEN: table})
    return table


class ChunkProgress:
    """Advances ``progress(done, total)`` batch by batch within one chunk (never past the chunk's end)."""

    def __init__(self, progress: Callable[[int, int], None] | None, start: int, end: int, total: int):
        self.progress, self.done, self.end, self.total = progress, start, end, total

    def __call__(self, n: int) -> None:
        self.done = min(self.done + n, self.end)
        if self.progress:
            self.progress(self.done, self.total)


class RowProgress:
    """``progress(done_rows, total_rows)`` of a sweep: after each chunk, computed or skipped (:meth:`advance`),
    and batch by batch within a computed one (:meth:`chunk`)."""

    def __init__(self, progress: Callable[[int, int], None] | None, total: int):
        self.progress, self.done, self.total = progress, 0, total

    def chunk(self, n_rows: int) -> ChunkProgress:
        """The batch-by-batch progress of the next chunk (``n_rows`` rows)."""
        return ChunkProgress(self.progress, self.done, self.done + n_rows, self.total)

    def advance(self, n_rows: int) -> None:
        """A chunk of ``n_rows`` rows is done (computed, or skipped)."""
        self.done += n_rows
        if self.progress:
            self.progress(self.done, self.total)


@dataclass
class ModelChunks:
    """One model's units of a patch sweep, the chunks of its samples, and what each needs; the IVs and the label
    space are computed once, by the screen or by the first chunk that runs. ``plan``: the screened plan with
    ``--screen``."""

    lm: LoadedModel
    name: str
    source: LoadedModel
    task: Task
    subtask: str
    plan: PatchPlan
    mode: PatchMode
    target: str
    fmt: str
    stats: EngineStats
    const: dict
    linear: bool
    candidates: AnswerCandidates | None
    units: Sequence[Unit[list[int]]]
    progress: RowProgress
    batch_size: int | None
    backend: str
    memory_budget: int | str | None
    device: str
    ivs: torch.Tensor | None = None  # [1, layer, d_model]
    space: torch.Tensor | None = None
    screened: tuple[FirstOrder, dict[int, int]] | None = None  # all samples' terms, sample id → their row

    def n_rows(self, unit: Unit[list[int]]) -> int:
        return len(unit.work) * len(self.plan.rows)

    def tables(self, unit: Unit[list[int]]) -> dict[str, pd.DataFrame]:
        """The ``patch`` rows and ``baselines`` of one chunk (the samples ``unit.work``)."""
        lm = self.lm
        prompts, instruction = prepare(lm, self.task, self.subtask, self.plan, unit.work, self.mode, self.target,
                                       self.fmt)
        if self.ivs is None:  # one source run per instruction (and model), only when there is work left
            self.ivs = _ivs(self.source, instruction, self.fmt, self.stats)
            self.space = label_space_tokens(lm, self.task, self.subtask, prompts[0].instructed)
        terms = None
        if self.linear and self.screened is not None:
            terms = self.screened[0].take([self.screened[1][p.sample] for p in prompts])
        elif self.linear:
            terms = _terms(lm, prompts, self.ivs, self.stats)
        on_rows = self.progress.chunk(self.n_rows(unit))
        budget = resolve_memory_budget(self.memory_budget, self.device if self.device == "auto" else lm.device)
        cols, base = _chunk_rows(lm, prompts, self.plan, self.ivs, self.space, self.stats, self.batch_size,
                                 on_rows, self.backend, budget, self.candidates, terms)
        n = len(cols["sample"])
        rows_df = pd.DataFrame({**{k: np.repeat(np.array([v], dtype=object), n) for k, v in self.const.items()},
                                **cols})
        del cols
        log.info("%s chunk %d/%d: %d rows", self.name, unit.number - self.units[0].number + 1, len(self.units),
                 len(rows_df))
        return {BASELINES: pd.DataFrame([{**self.const, **r} for r in base]), TABLE: rows_df}

    def advance(self, unit: Unit[list[int]], ran: bool) -> None:
        """After each chunk, computed or skipped: the sweep's progress."""
        self.progress.advance(self.n_rows(unit))


def _as_loaded(m: LoadedModel | str, dtype: str, device: str) -> LoadedModel:
    if isinstance(m, LoadedModel):
        return m
    from ivlens.models.load import load_model

    return load_model(m, dtype=dtype, device=device)


def patch_sweep(models: LoadedModel | str | Sequence[LoadedModel | str], task: Task | str, subtask: str | None = None,
                *, layers: str | list = "single", positions: str | list = "first,last",
                samples: int | Sequence[int] | None = None, split: str = "all", mode: PatchMode = "transfer",
                source_model: LoadedModel | str | None = None, target: str = "bare", fmt: str = "raw",
                batch_size: int | None = None, chunk_size: int = 25, seed: int = 0, run: RunDir | None = None,
                dtype: str = "float32", device: str = "cpu", backend: str = "torch",
                memory_budget: int | str | None = None, score: Score = "first-token",
                progress: Callable[[int, int], None] | None = None,
                owns: Callable[[int], bool] | None = None, linear_estimate: str = "auto",
                screen: int | None = None, effect: str = "delta_logit_vs_target") -> SweepResult:
    """Patch IVs into targets for every layer set × position × sample, for one or more models side by side.

    Args:
        models: loaded models or names for :func:`ivlens.models.load.load_model` (several: side by side).
        task, subtask: a :class:`~ivlens.tasks.Task` or its name; the subtask whose IV is patched (default: first).
        layers: ``single``, ``pairs``, ``triplets`` or ``"3,5,7;2,4"`` (see :mod:`ivlens.patching.plan`).
        positions: ``"first,last"``, ``"t_inst"`` (contrastive), token indices.
        samples: ``None`` (all), ``n`` (drawn with ``seed`` by :func:`ivlens.tasks.selection.select_samples`,
            the selector of every analysis), or a list of indices.
        split: ``all``, or an organism's ``heldout`` / ``train`` queries (from its card), per model.
        mode: ``transfer`` or ``contrastive``.
        source_model: take the IVs from this checkpoint instead (same layer count and width).
        target: ``bare`` or ``formatted`` query-only target (transfer mode); fmt: ``raw`` or ``chat``.
        batch_size: rows per bounded trie (one group of batched layer calls; ``None``: from ``memory_budget``).
        memory_budget: bytes (or ``"4GB"``, ``"512MiB"``) of working memory beyond the weights; ``None``: the
            default of :func:`ivlens.budget.resolve_memory_budget` for the model's device. Sizes the groups, the
            unembedding sub-batches and the samples per engine pass; results do not depend on it.
        chunk_size: samples per unit file (the unit of streaming, of ``--resume`` and of ``--shard``).
        run: a :class:`~ivlens.runs.RunDir` to stream unit files to (and to resume from); ``None`` keeps results in memory.
        backend: ``torch`` (the fast layer-level engine) or ``nnsight`` (whole batched forwards through nnsight
            envoys: slower, remote-ready; same results).
        score: ``first-token`` (the label's first token at the last position) or ``answer`` (every candidate label
            teacher-forced with the patch in place; see the module docstring).
        progress: ``progress(done_rows, total_rows)`` after each batch.
        owns: ``owns(unit) -> bool``: run only these units of work (chunks, numbered model by model; a shard,
            :mod:`ivlens.sharding`); the result then holds only their rows.
        linear_estimate: ``auto`` (on where the sets have two or more layers and the rows are scored on the
            local engine at the first token), ``on`` or ``off``: the rows' ``linear_estimate`` and ``nonlinearity``
            columns (:mod:`ivlens.patching.linear`; one forward and backward per sample).
        screen: ``K``: rank every set by its linear estimate over all the model's samples and run the exact
            engine on the singles and each position's top ``K`` sets of every size ≥ 2 only
            (:mod:`ivlens.patching.screen`; the ranking is the ``screen`` table).
        effect: the effect whose estimate ranks the sets for ``screen`` (its own where
            :data:`ivlens.patching.linear.ESTIMATED` has one, else the logit's).

    Returns:
        :class:`SweepResult`. ``rows`` columns: model, source_model, task, subtask, mode, target, sample, query,
        label, position, pos_index, layers, set_size, first_layer, logit, prob, rank, rr, logit_diff, top1, ia_top1,
        acc_top1, acc_space and ``delta_<metric>_vs_{target,instructed}``; with the linear estimate on also
        ``linear_estimate``, ``nonlinearity`` (of ``delta_logit_vs_target``) and ``linear_estimate_logit_diff``,
        ``nonlinearity_logit_diff`` (of ``delta_logit_diff_vs_target``; NaN without an alternative label).

    >>> res = patch_sweep(lm, "adjectives", "adj_ant", layers="pairs", samples=20)
    >>> res.rows.groupby("layers").delta_logit_vs_target.mean()
    """
    if backend not in ("torch", "nnsight"):
        raise ValueError(f"unknown backend {backend!r}; use torch or nnsight")
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; use {' or '.join(SCORES)}")
    if score == "answer" and backend != "torch":
        raise ValueError("--score answer runs on the torch backend only; drop --backend nnsight")
    nnsight_models = [m for m in ([models] if isinstance(models, LoadedModel | str) else list(models))
                      if through_nnsight(m)]
    if score == "answer" and nnsight_models:
        raise ValueError("--score answer runs on the torch engine only; drop --remote")
    _check_linear(linear_estimate, screen, score, bool(nnsight_models))
    task = load_task(task) if isinstance(task, str) else task
    subtask = subtask or task.subtask_names[0]
    task.subtask(subtask)
    if mode == "contrastive":
        require_contrastive(task, analysis="--mode contrastive")  # before any model is loaded
    model_list = [models] if isinstance(models, LoadedModel | str) else list(models)
    if not model_list:
        raise ValueError("patch_sweep needs at least one model")
    lms = [_as_loaded(m, dtype, device) for m in model_list]
    src_lm = _as_loaded(source_model, dtype, device) if source_model is not None else None
    names = [lm.name for lm in lms]
    if len(set(names)) != len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    ids_per_model = [sample_indices(task, samples, seed, split_queries(lm.path, lm.name, task, split)) for lm in lms]
    plans = [PatchPlan.build(layers, positions, lm.n_layers) for lm in lms]
    total = sum(len(ids) * len(p.rows) for ids, p in zip(ids_per_model, plans, strict=True))
    row_progress = RowProgress(progress, total)
    stats: dict[str, EngineStats] = {}
    screens = TablePieces(run, (SCREEN,))  # --screen's ranking: a piece per model, written before its chunks
    pieces = TablePieces(run, (BASELINES, TABLE))  # the rows last: their piece marks the chunk done
    loop = UnitLoop(pieces, owns=owns)  # a unit: a chunk of one model's samples
    warned: set[tuple[str, str]] = set()  # the label-clash warning: once per run, not per model
    for mi, (lm, name, plan, sample_ids) in enumerate(zip(lms, names, plans, ids_per_model, strict=True)):
        units = loop.number((unit_key(mi, "c", ci), sample_ids[i:i + chunk_size])
                            for ci, i in enumerate(range(0, len(sample_ids), chunk_size)))
        st = stats.setdefault(name, EngineStats())
        s_lm = src_lm or lm
        if s_lm.n_layers != lm.n_layers or s_lm.d_model != lm.d_model:
            raise ValueError(f"source model {s_lm.name} ({s_lm.n_layers} layers, d_model "
                             f"{s_lm.d_model}) does not match {lm.name} ({lm.n_layers} layers, "
                             f"d_model {lm.d_model})")
        chunks = ModelChunks(
            lm, name, s_lm, task, subtask, plan, mode, target, fmt, stats=st,
            const={"model": name, "source_model": s_lm.name if src_lm is not None else name, "task": task.name,
                   "subtask": subtask, "mode": mode, "target": target if mode == "transfer" else "instructed",
                   "fmt": fmt, "score": score},
            linear=_linear_on(linear_estimate, screen, plan, layers, score, lm),
            candidates=AnswerCandidates.of(task, subtask) if score == "answer" else None, units=units,
            progress=row_progress, batch_size=batch_size, backend=backend, memory_budget=memory_budget,
            device=device)
        warn_first_token_clashes(lm.tokenizer, task, [subtask], fmt, score, seen=warned)
        # --screen: rank every set on all the model's samples, before any chunk (when a chunk is left to run)
        if screen is not None and any(loop.pending(u) for u in units):
            prompts, instruction = prepare(lm, task, subtask, plan, sample_ids, mode, target, fmt)
            chunks.ivs = _ivs(s_lm, instruction, fmt, st)
            chunks.space = label_space_tokens(lm, task, subtask, prompts[0].instructed)
            chunks.screened = (_terms(lm, prompts, chunks.ivs, st), {sid: i for i, sid in enumerate(sample_ids)})
            table = _screen(screens, unit_key(mi), chunks.screened[0], prompts, plan, screen, name, effect)
            chunks.plan = plan.with_layer_sets(screened_sets(table, plan.layer_sets))
            row_progress.total -= len(sample_ids) * (len(plan.rows) - len(chunks.plan.rows))
        loop.run(units, chunks.tables, progress=chunks.advance)
    return SweepResult(pieces.read(TABLE), pieces.read(BASELINES), stats, run, screens.read(SCREEN))
