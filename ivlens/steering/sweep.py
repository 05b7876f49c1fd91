"""Steering sweeps: directions from IVs, then every vector × α × layer × position × sample through the patching
engine as additive edits, streamed to Parquet unit files.

Per model: the IVs of the task's instructions and rephrasings are collected into ``<run>/ivs/<model>/``
(:func:`ivlens.probing.collect.collect_ivs`, resumable), the directions computed from them
(:mod:`ivlens.steering.vectors`) and saved to ``<run>/vectors/<model>.safetensors``. Then per chunk of samples:
one clean run of the query-only targets and one instructed run, and the rows through
:func:`ivlens.patching.engine.patched_metrics` with ``edit="add"``: each row starts from the clean residual after
its layer, and only the positions from its first edited token on are recomputed. Prompts, labels, the label space
and the metrics are patching's (:func:`ivlens.patching.sweep.prepare`, :mod:`ivlens.patching.metrics`), so a
steered row and a patched row of the same sample are comparable column by column.

Unit files: ``steer/shard-m<model>-c<chunk>.parquet`` and ``baselines/…``, written atomically when a chunk is done; a
resumed sweep skips finished chunks (the chunks are the units of work of :mod:`ivlens.units`).

``--shard i/n`` (:mod:`ivlens.sharding`): the units of work are the chunks, numbered model by model as the
unsharded sweep does them, and a shard runs its own. The directions are not split: a shard that owns a chunk of a
model collects that model's IVs whole and computes its directions itself, which are the unsharded run's (the
collection is deterministic; ``ivlens merge`` checks that every shard's IVs and ``vectors/`` files are identical,
byte for byte, and the merged run's vectors table is computed again from them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save as st_save

from ivlens.budget import resolve_memory_budget
from ivlens.models.load import LoadedModel
from ivlens.patching.engine import EngineStats, RowSpec, clean_run, patched_metrics
from ivlens.patching.metrics import deltas, label_metrics
from ivlens.patching.plan import PatchPlan
from ivlens.patching.reach import attention_windows, reaches_logits
from ivlens.patching.sweep import (
    RowProgress,
    engine_passes,
    label_space_tokens,
    pad_token_id_of,
    prepare,
    starts_with_bos,
)
from ivlens.probing.collect import collect_ivs
from ivlens.probing.instructions import instruction_set, organism_heldout
from ivlens.runs import RunDir, atomic_write_bytes, slug
from ivlens.tasks import Task
from ivlens.tasks.selection import sample_indices, split_queries
from ivlens.units import TablePieces, Unit, UnitLoop, unit_key

from .plan import SteerPlan, resolve_span
from .vectors import NAMED_VECTORS, Directions, directions, run_vectors

log = logging.getLogger(__name__)

TABLE = "steer"
BASELINES = "baselines"


@dataclass
class SteerResult:
    """``rows``: one row per (model, sample, vector, α, layer, position); ``baselines``: target-only and instructed
    metrics per (model, sample); ``vectors``: per (model, vector, layer) the direction's raw norm and the scale."""

    rows: pd.DataFrame
    baselines: pd.DataFrame
    vectors: pd.DataFrame
    stats: dict[str, EngineStats] = field(default_factory=dict)


def model_directions(lm: LoadedModel, task: Task, subtask: str, names: tuple[str, ...], run: RunDir, *,
                     fmt: str = "raw", max_per_subtask: int | None = None, memory_budget=None) -> Directions:
    """Collect (or reuse) ``lm``'s IVs of the task's instructions in ``run``, read the probe-run directions of
    ``names`` for ``lm``'s label, and compute the directions."""
    other = task.other(subtask) if task.is_contrastive else None
    rows = instruction_set([task], "instructions", None, organism_heldout(lm.path), max_per_subtask)
    store = collect_ivs(lm, rows, run.path / "ivs" / slug(lm.name), fmt=fmt, resume=True,
                        memory_budget=memory_budget)
    labels = store.labels()
    in_task = (labels.task == task.name).to_numpy()
    is_a = in_task & (labels.subtask == subtask).to_numpy()
    is_b = in_task & (labels.subtask == other).to_numpy() if other else np.zeros(len(labels), bool)
    xs = [store.load_layer(layer) for layer in range(lm.n_layers)]
    from_runs = {name: run_vectors(name, lm.name, lm.n_layers, subtask, other)
                 for name in names if name not in NAMED_VECTORS}
    return directions(names, xs, is_a, is_b, from_runs)


def first_equal_sources(edits: torch.Tensor) -> np.ndarray:
    """``[n_sources, layer]``: for each added vector ``edits[i, l]`` (``edits: [n_sources, layer, d_model]``), the
    first source ``j ≤ i`` whose vector at layer ``l`` is equal to it element for element (``i`` itself where none
    before is). Rows that add equal vectors at the same layer and positions compute the same thing, so giving them
    one source lets the engine run them once (:func:`ivlens.patching.trie.dedup_rows`): α = 0 adds the zero vector
    for every direction (``0 · v`` is ±0, and ``x + (±0)`` is ``x`` for every residual entry that is not itself −0)."""
    n, L = edits.shape[:2]
    first = np.tile(np.arange(n, dtype=np.int64)[:, None], (1, L))
    for layer in range(L):
        for i in range(n):
            first[i, layer] = next(j for j in range(i + 1) if torch.equal(edits[j, layer], edits[i, layer]))
    return first


def _rows_of_chunk(lm: LoadedModel, prompts, plan: SteerPlan, edits: torch.Tensor, space: torch.Tensor,
                   stats: EngineStats, batch_size: int | None, budget: int, on_rows) -> tuple[dict, list[dict]]:
    """Columns of the steered rows of one chunk (sample-major, then the plan's row order) and baseline records."""
    parts, base = [], []
    n_alpha = len(plan.alphas)
    source = first_equal_sources(edits)  # equal added vectors: one computation
    for idx in engine_passes(lm, prompts, budget):
        ps = [prompts[b] for b in idx]
        adapter, pad = lm.adapter, pad_token_id_of(lm)
        clean = clean_run(adapter, [p.target.input_ids for p in ps], pad, record=True, stats=stats)
        instr = clean_run(adapter, [p.instructed.input_ids for p in ps], pad, record=False, stats=stats)
        spans = [{pos: resolve_span(pos, len(p.target), has_bos=starts_with_bos(lm.tokenizer, p.target))
                  for pos in plan.positions} for p in ps]
        specs = [RowSpec(b, int(source[v * n_alpha + a, layer]), (layer,), *spans[b][pos])
                 for b in range(len(ps)) for v, a, layer, pos in plan.rows]
        label = torch.tensor([p.label_token for p in ps])
        alt = torch.tensor([p.alt_token for p in ps])
        got = patched_metrics(adapter, clean, edits, specs, label, alt, space, batch_size=batch_size,
                              memory_budget=budget, stats=stats, on_rows=on_rows, edit="add")
        dev = clean.last_logits.device
        base_t = {k: v.cpu() for k, v in label_metrics(clean.last_logits, label.to(dev), alt.to(dev),
                                                       space.to(dev)).items()}
        base_i = {k: v.cpu() for k, v in label_metrics(instr.last_logits, label.to(dev), alt.to(dev),
                                                       space.to(dev)).items()}
        per = len(plan.rows)
        row_b = torch.arange(len(ps)).repeat_interleave(per)
        got.update(deltas(got, {k: v[row_b] for k, v in base_t.items()}, "target"))
        got.update(deltas(got, {k: v[row_b] for k, v in base_i.items()}, "instructed"))
        cols = {
            "sample": np.repeat([p.sample for p in ps], per),
            "query": np.repeat(np.array([p.query for p in ps], dtype=object), per),
            "label": np.repeat(np.array([p.label for p in ps], dtype=object), per),
            "alt_label": np.repeat(np.array([p.alt_label for p in ps], dtype=object), per),
            "label_token": np.repeat([p.label_token for p in ps], per),
            "vector": np.tile(np.array([plan.vectors[r[0]] for r in plan.rows], dtype=object), len(ps)),
            "alpha": np.tile(np.array([plan.alphas[r[1]] for r in plan.rows]), len(ps)),
            "layer": np.tile(np.array([r[2] for r in plan.rows], dtype=np.int64), len(ps)),
            "position": np.tile(np.array([str(r[3]) for r in plan.rows], dtype=object), len(ps)),
            "pos_index": np.array([s.token for s in specs], dtype=np.int64),
            "span": np.array([s.span for s in specs], dtype=np.int64),
            "n_tokens": np.repeat([len(p.target) for p in ps], per),
        }
        # False: no later computation reads the edit, its effect is 0 by construction (summaries do not rank it)
        cols["reaches_logits"] = reaches_logits(attention_windows(lm.model, lm.n_layers), cols["layer"],
                                                cols["pos_index"], cols["n_tokens"], cols["span"])
        for k, v in got.items():
            cols[k] = v.double().numpy() if v.is_floating_point() else v.numpy()
        parts.append(cols)
        for name, m in (("target", base_t), ("instructed", base_i)):
            for b, p in enumerate(ps):
                base.append({"sample": p.sample, "query": p.query, "label": p.label, "run": name,
                             "n_tokens": len(p.target if name == "target" else p.instructed),
                             **{k: v[b].item() for k, v in m.items()}})
    base.sort(key=lambda r: r["run"] != "target")
    return {k: np.concatenate([c[k] for c in parts]) for k in parts[0]}, base


@dataclass
class SteerChunks:
    """One model's units of a steering sweep, the chunks of its samples, and what each needs (``edits``:
    :meth:`~ivlens.steering.vectors.Directions.edits`); the label space is computed once, by the first chunk that
    runs."""

    lm: LoadedModel
    name: str
    task: Task
    subtask: str
    plan: SteerPlan
    target: str
    fmt: str
    stats: EngineStats
    units: Sequence[Unit[list[int]]]
    progress: RowProgress
    edits: torch.Tensor
    batch_size: int | None
    budget: int
    const: dict
    space: torch.Tensor | None = None

    def n_rows(self, unit: Unit[list[int]]) -> int:
        return len(unit.work) * len(self.plan.rows)

    def tables(self, unit: Unit[list[int]]) -> dict[str, pd.DataFrame]:
        """The ``steer`` rows and ``baselines`` of one chunk (the samples ``unit.work``)."""
        lm = self.lm
        prompts, _ = prepare(lm, self.task, self.subtask, PatchPlan.build("0", "last", lm.n_layers), unit.work,
                             "transfer", self.target, self.fmt)
        if self.space is None:
            self.space = label_space_tokens(lm, self.task, self.subtask, prompts[0].instructed)
        cols, base = _rows_of_chunk(lm, prompts, self.plan, self.edits, self.space, self.stats, self.batch_size,
                                    self.budget, self.progress.chunk(self.n_rows(unit)))
        n = len(cols["sample"])
        rows_df = pd.DataFrame({**{k: np.repeat(np.array([v], dtype=object), n) for k, v in self.const.items()},
                                **cols})
        log.info("%s steer chunk %d: %d rows", self.name, unit.number - self.units[0].number + 1, n)
        return {BASELINES: pd.DataFrame([{**self.const, **r} for r in base]), TABLE: rows_df}

    def advance(self, unit: Unit[list[int]], ran: bool) -> None:
        """After each chunk, computed or skipped: the sweep's progress."""
        self.progress.advance(self.n_rows(unit))


def steer_sweep(lms: Sequence[LoadedModel], names: Sequence[str], task: Task, subtask: str, plan: SteerPlan,
                run: RunDir, *, samples: int | None = None, split: str = "all", target: str = "bare",
                fmt: str = "raw", seed: int = 0, chunk_size: int = 25, batch_size: int | None = None,
                memory_budget=None, max_per_subtask: int | None = None,
                progress: Callable[[int, int], None] | None = None,
                owns: Callable[[int], bool] | None = None) -> SteerResult:
    """Steer every model (``names``: their labels in the tables) over ``plan`` for the selected samples.

    Args:
        lms: loaded models (side by side); task, subtask: the instructed subtask A (its label is scored).
        plan: vectors × α × layers × positions (:class:`~ivlens.steering.plan.SteerPlan`).
        run: the run directory unit files stream to (and are resumed from).
        samples, split, seed: the samples, drawn as in every analysis; target: ``bare`` or ``formatted``.
        memory_budget: bytes or ``"4GB"`` (sizes the engine's groups; results do not depend on it).
        max_per_subtask: rephrasings per subtask used for the directions (default all).
        progress: ``progress(done_rows, total_rows)``.
        owns: ``owns(unit) -> bool``: run only these chunks (numbered model by model; a shard, see the module
            docstring); a model none of whose chunks it owns is skipped, its IVs too.

    Returns:
        :class:`SteerResult` read back from the run's unit files (empty tables for a shard that owns no chunk).
    """
    ids_per_model = [sample_indices(task, samples, seed, split_queries(lm.path, lm.name, task, split)) for lm in lms]
    row_progress = RowProgress(progress, sum(len(ids) * len(plan.rows) for ids in ids_per_model))
    stats, vec_rows = {}, []
    pieces = TablePieces(run, (BASELINES, TABLE))  # the rows last: their piece marks the chunk done
    loop = UnitLoop(pieces, owns=owns)  # a unit: a chunk of one model's samples
    for mi, (lm, name, sample_ids) in enumerate(zip(lms, names, ids_per_model, strict=True)):
        units = loop.number((unit_key(mi, "c", ci // chunk_size), sample_ids[ci:ci + chunk_size])
                            for ci in range(0, len(sample_ids), chunk_size))
        if units and not any(loop.owns(u) for u in units):  # another shard's model: no IVs, no directions
            row_progress.advance(len(sample_ids) * len(plan.rows))
            continue
        st = stats.setdefault(name, EngineStats())
        dirs = model_directions(lm, task, subtask, plan.vectors, run, fmt=fmt, max_per_subtask=max_per_subtask,
                                memory_budget=memory_budget)
        atomic_write_bytes(run.path / "vectors" / f"{slug(name)}.safetensors",
                           st_save({"unit": dirs.unit.contiguous(), "scale": dirs.scale.contiguous()},
                                   metadata={"vectors": ",".join(dirs.names)}))
        vec_rows += [{"model": name, "vector": v, "layer": layer, "raw_norm": float(dirs.raw_norm[i, layer]),
                      "scale": float(dirs.scale[layer])}
                     for i, v in enumerate(dirs.names) for layer in range(lm.n_layers)]
        chunks = SteerChunks(lm, name, task, subtask, plan, target, fmt, st, units, row_progress,
                             edits=dirs.edits(plan.alphas).to(lm.adapter.embed.weight.dtype),
                             batch_size=batch_size, budget=resolve_memory_budget(memory_budget, lm.device),
                             const={"model": name, "task": task.name, "subtask": subtask, "target": target,
                                    "fmt": fmt})
        loop.run(units, chunks.tables, progress=chunks.advance)
    return SteerResult(pieces.read(TABLE), pieces.read(BASELINES), pd.DataFrame(vec_rows), stats)
