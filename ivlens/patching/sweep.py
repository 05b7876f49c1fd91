"""Patch sweeps: prompts, the engine, metrics and streamed results for one task and subtask.

Modes (see ``docs/patching.md``):

- ``transfer`` (the paper's): source = the subtask's **instruction-only** prompt, target = the **query-only**
  prompt (``target="bare"``: the bare query, the paper's default; ``"formatted"``: ``"Adjective: big. Answer:"``).
  The label is the subtask's answer; where the task has a second subtask its answer is the alternative label.
- ``contrastive`` (two-subtask tasks): source = subtask A's instruction-only prompt, target = subtask B's full
  instructed prompt, patched at its ``t_inst``; label = A's answer, alternative = B's, so ``logit_diff`` (A − B)
  measures whether the answer flips.

In both modes the *instructed run* is subtask A's instructed prompt and the *target-only run* the unpatched target.
With ``source_model`` the IVs come from another checkpoint of the same shape.

Results stream to a run directory as Parquet shards, one per (model, chunk of samples), written atomically after
the chunk finishes; a resumed sweep skips finished chunks, so it ends with exactly the rows of an uninterrupted run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch

from ivlens.models.load import LoadedModel
from ivlens.runs import RunDir
from ivlens.tasks import Task, TaskError, load_task, require_contrastive
from ivlens.tasks.prompts import (
    Prompt,
    instructed_prompt,
    instruction_prompt,
    label_token_ids,
    query_prompt,
)

from .engine import EngineStats, RowSpec, clean_run, patched_logits, source_vectors
from .metrics import deltas, label_metrics
from .plan import PatchPlan, layer_set_label, resolve_position

log = logging.getLogger(__name__)

Mode = Literal["transfer", "contrastive"]
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
    metrics per (model, sample); ``stats``: engine work counters per model name."""

    rows: pd.DataFrame
    baselines: pd.DataFrame
    stats: dict[str, EngineStats] = field(default_factory=dict)
    run: RunDir | None = None


def select_samples(task: Task, samples: int | Sequence[int] | None, seed: int = 0) -> list[int]:
    """Sample indices: all (``None``), an explicit list, or ``n`` drawn without replacement with ``seed`` (sorted;
    all of them when ``n`` ≥ the task's size)."""
    n_total = len(task.samples)
    if samples is None:
        return list(range(n_total))
    if isinstance(samples, int):
        if samples < 1:
            raise ValueError(f"--samples must be positive, got {samples}")
        if samples >= n_total:
            return list(range(n_total))
        rng = np.random.default_rng(seed)
        return sorted(int(i) for i in rng.choice(n_total, size=samples, replace=False))
    out = [int(i) for i in samples]
    bad = [i for i in out if not 0 <= i < n_total]
    if bad:
        raise ValueError(f"sample indices {bad} out of range: task {task.name!r} has {n_total} samples")
    return out


def _has_bos(tok, prompt: Prompt) -> bool:
    return tok.bos_token_id is not None and len(prompt.input_ids) > 1 and prompt.input_ids[0] == tok.bos_token_id


def prepare(lm: LoadedModel, task: Task, subtask: str, plan: PatchPlan, sample_ids: Sequence[int], mode: Mode,
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
        positions = tuple(resolve_position(p, len(tgt), t_inst=tgt.t_inst, has_bos=_has_bos(tok, tgt))
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


def _pad_id(lm: LoadedModel) -> int:
    tok = lm.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def _chunk_rows(lm: LoadedModel, prompts: list[SamplePrompts], plan: PatchPlan, ivs: torch.Tensor,
                space: torch.Tensor, stats: EngineStats, batch_size: int | None,
                on_rows: Callable[[int], None] | None, backend: str = "torch") -> tuple[list[dict], list[dict]]:
    """Run one chunk of samples; records of patched rows and of baselines."""
    adapter, pad = lm.adapter, _pad_id(lm)
    clean = clean_run(adapter, [p.target.input_ids for p in prompts], pad, record=True, stats=stats)
    instr = clean_run(adapter, [p.instructed.input_ids for p in prompts], pad, record=False, stats=stats)
    specs, meta = [], []
    for b, p in enumerate(prompts):
        for pos_name, tok_idx in zip(plan.positions, p.positions, strict=True):
            for layers in plan.layer_sets:
                specs.append(RowSpec(b, 0, layers, tok_idx))
                meta.append((b, pos_name, tok_idx, layers))
    if backend == "nnsight":
        from .nnsight_backend import patched_logits_nnsight as run_rows
    else:
        run_rows = patched_logits
    logits = run_rows(adapter, clean, ivs, specs, batch_size=batch_size, stats=stats, on_rows=on_rows)
    dev = logits.device
    label = torch.tensor([p.label_token for p in prompts], device=dev)
    alt = torch.tensor([p.alt_token for p in prompts], device=dev)
    space = space.to(dev)
    base_t = label_metrics(clean.last_logits, label, alt, space)
    base_i = label_metrics(instr.last_logits, label, alt, space)
    row_b = torch.tensor([m[0] for m in meta], dtype=torch.long, device=dev)
    got = label_metrics(logits, label[row_b], alt[row_b], space)
    got.update(deltas(got, {k: v[row_b] for k, v in base_t.items()}, "target"))
    got.update(deltas(got, {k: v[row_b] for k, v in base_i.items()}, "instructed"))
    cols = {k: v.cpu().numpy() for k, v in got.items()}
    rows = []
    for j, (b, pos_name, tok_idx, layers) in enumerate(meta):
        p = prompts[b]
        rec = {"sample": p.sample, "query": p.query, "label": p.label, "alt_label": p.alt_label,
               "label_token": p.label_token, "position": str(pos_name), "pos_index": tok_idx,
               "n_tokens": len(p.target), "layers": layer_set_label(layers), "set_size": len(layers),
               "first_layer": layers[0]}
        rec.update({k: v[j].item() for k, v in cols.items()})
        rows.append(rec)
    base = []
    for name, m in (("target", base_t), ("instructed", base_i)):
        mc = {k: v.cpu().numpy() for k, v in m.items()}
        for b, p in enumerate(prompts):
            rec = {"sample": p.sample, "query": p.query, "label": p.label, "run": name,
                   "n_tokens": len(p.target if name == "target" else p.instructed)}
            rec.update({k: v[b].item() for k, v in mc.items()})
            base.append(rec)
    return rows, base


class _ChunkProgress:
    """Advances ``progress(done, total)`` batch by batch within one chunk (never past the chunk's end)."""

    def __init__(self, progress: Callable[[int, int], None] | None, start: int, end: int, total: int):
        self.progress, self.done, self.end, self.total = progress, start, end, total

    def __call__(self, n: int) -> None:
        self.done = min(self.done + n, self.end)
        if self.progress:
            self.progress(self.done, self.total)


def _as_loaded(m: LoadedModel | str, dtype: str, device: str) -> LoadedModel:
    if isinstance(m, LoadedModel):
        return m
    from ivlens.models.load import load_model

    return load_model(m, dtype=dtype, device=device)


def patch_sweep(models: LoadedModel | str | Sequence[LoadedModel | str], task: Task | str, subtask: str | None = None,
                *, layers: str | list = "single", positions: str | list = "first,last",
                samples: int | Sequence[int] | None = None, mode: Mode = "transfer",
                source_model: LoadedModel | str | None = None, target: str = "bare", fmt: str = "raw",
                batch_size: int | None = None, chunk_size: int = 25, seed: int = 0, run: RunDir | None = None,
                dtype: str = "float32", device: str = "cpu", backend: str = "torch",
                progress: Callable[[int, int], None] | None = None) -> SweepResult:
    """Patch IVs into targets for every layer set × position × sample, for one or more models side by side.

    Args:
        models: loaded models or names for :func:`ivlens.models.load.load_model` (several: side by side).
        task, subtask: a :class:`~ivlens.tasks.Task` or its name; the subtask whose IV is patched (default: first).
        layers: ``single``, ``pairs``, ``triplets`` or ``"3,5,7;2,4"`` (see :mod:`ivlens.patching.plan`).
        positions: ``"first,last"``, ``"t_inst"`` (contrastive), token indices.
        samples: ``None`` (all), ``n`` (drawn with ``seed``), or a list of indices.
        mode: ``transfer`` or ``contrastive``.
        source_model: take the IVs from this checkpoint instead (same layer count and width).
        target: ``bare`` or ``formatted`` query-only target (transfer mode); fmt: ``raw`` or ``chat``.
        batch_size: rows per batched layer call (``None``: automatic from a memory budget).
        chunk_size: samples per shard (the unit of streaming and of ``--resume``).
        run: a :class:`~ivlens.runs.RunDir` to stream shards to (and to resume from); ``None`` keeps results in memory.
        backend: ``torch`` (the fast layer-level engine) or ``nnsight`` (whole batched forwards through nnsight
            envoys: slower, remote-ready; same results).
        progress: ``progress(done_rows, total_rows)`` after each batch.

    Returns:
        :class:`SweepResult`. ``rows`` columns: model, source_model, task, subtask, mode, target, sample, query,
        label, position, pos_index, layers, set_size, first_layer, logit, prob, rank, rr, logit_diff, top1, ia,
        acc_top1, acc_space and ``delta_<metric>_vs_{target,instructed}``.

    >>> res = patch_sweep(lm, "adjectives", "adj_ant", layers="pairs", samples=20)
    >>> res.rows.groupby("layers").delta_logit_vs_target.mean()
    """
    if backend not in ("torch", "nnsight"):
        raise ValueError(f"unknown backend {backend!r}; use torch or nnsight")
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
    sample_ids = select_samples(task, samples, seed)
    chunks = [sample_ids[i:i + chunk_size] for i in range(0, len(sample_ids), chunk_size)]
    plans = [PatchPlan.build(layers, positions, lm.adapter.n_layers) for lm in lms]
    total = sum(len(sample_ids) * len(p.rows) for p in plans)
    done = 0
    stats: dict[str, EngineStats] = {}
    all_rows, all_base = [], []
    for mi, (lm, name, plan) in enumerate(zip(lms, names, plans, strict=True)):
        st = stats.setdefault(name, EngineStats())
        s_lm = src_lm or lm
        if s_lm.adapter.n_layers != lm.adapter.n_layers or s_lm.adapter.d_model != lm.adapter.d_model:
            raise ValueError(f"source model {s_lm.name} ({s_lm.adapter.n_layers} layers, d_model "
                             f"{s_lm.adapter.d_model}) does not match {lm.name} ({lm.adapter.n_layers} layers, "
                             f"d_model {lm.adapter.d_model})")
        ivs = None
        space = None
        const = {"model": name, "source_model": s_lm.name if src_lm is not None else name, "task": task.name,
                 "subtask": subtask, "mode": mode, "target": target if mode == "transfer" else "instructed",
                 "fmt": fmt}
        for ci, chunk in enumerate(chunks):
            key = f"m{mi}-c{ci:05d}"
            n_rows = len(chunk) * len(plan.rows)
            if run is not None and run.has_shard(TABLE, key):
                done += n_rows
                if progress:
                    progress(done, total)
                continue
            prompts, instruction = prepare(lm, task, subtask, plan, chunk, mode, target, fmt)
            if ivs is None:  # one source run per instruction (and model), only when there is work left
                src_ids = instruction_prompt(s_lm.tokenizer, instruction, fmt).input_ids
                ivs = source_vectors(s_lm.adapter, [src_ids], _pad_id(s_lm), stats=st)
                space = label_space_tokens(lm, task, subtask, prompts[0].instructed)

            on_rows = _ChunkProgress(progress, done, done + n_rows, total)
            rows, base = _chunk_rows(lm, prompts, plan, ivs, space, st, batch_size, on_rows, backend)
            rows_df = pd.DataFrame([{**const, **r} for r in rows])
            base_df = pd.DataFrame([{**const, **r} for r in base])
            if run is not None:
                run.write_shard(BASELINES, key, base_df)
                run.write_shard(TABLE, key, rows_df)  # written last: its presence marks the chunk done
            else:
                all_rows.append(rows_df)
                all_base.append(base_df)
            done += n_rows
            if progress:
                progress(done, total)
            log.info("%s chunk %d/%d: %d rows", name, ci + 1, len(chunks), len(rows))
    if run is not None:
        rows_df, base_df = run.read_table(TABLE), run.read_table(BASELINES)
    else:
        rows_df, base_df = pd.concat(all_rows, ignore_index=True), pd.concat(all_base, ignore_index=True)
    return SweepResult(rows_df, base_df, stats, run)
