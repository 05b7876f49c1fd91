"""High-level Python API: each function runs one analysis end to end and writes a run directory.

The CLI commands are thin wrappers over these functions.

>>> from ivlens.api import run_eval
>>> from ivlens.models import load_model
>>> run, summary, decides = run_eval([load_model("organism-sft")], "adjectives", split="heldout")
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from .eval import Judge, evaluate, instruction_decides, summarize
from .models.load import LoadedModel
from .runs import RunDir
from .tasks import Task, TaskError, load_task
from .tasks.selection import select_samples


def split_queries(lm: LoadedModel, task: Task, split: str) -> list[str] | None:
    """Queries of ``split`` (``train`` / ``heldout``) recorded in a model organism's card; None for ``all``."""
    if split == "all":
        return None
    if split not in ("train", "heldout"):
        raise TaskError(f"--split must be heldout, train or all (got {split!r})")
    from .organism.card import organism_split

    splits = organism_split(Path(lm.path))
    if splits is None:
        raise TaskError(f"--split {split} needs a model organism (a card.json next to the weights); "
                        f"{lm.name} has none: use --split all")
    if task.name not in splits:
        raise TaskError(f"the organism's card has no split for task {task.name!r} (it has {', '.join(splits)})")
    return list(splits[task.name][split])


def run_eval(models: Sequence[LoadedModel], task: str | Task, *, subtask: str | None = None, samples: int | None = None,
             fmt: str = "raw", split: str = "all", query_style: str = "formatted", prefill: str | None = None,
             judge: Judge | None = None, batch_size: int = 16, seed: int = 0, out: str | Path | None = None,
             run: RunDir | None = None, progress: Callable | None = None, score: str = "first-token",
             ) -> tuple[RunDir, pd.DataFrame, pd.DataFrame]:
    """Evaluate every model on ``task`` (``score``: ``first-token`` or ``answer``, see :mod:`ivlens.eval`); writes ``results.parquet`` (one row per sample × subtask × condition),
    ``summary.parquet`` and ``decides.parquet`` to the run directory. Returns ``(run, summary, decides)``."""
    t = task if isinstance(task, Task) else load_task(task)
    subtasks = [t.subtask(subtask).name] if subtask else t.subtask_names
    if run is None:
        run = RunDir.create("eval", f"{t.name}", out=out, task=t.name, seed=seed,
                            models=[m.describe() for m in models],
                            args={"subtask": subtask, "samples": samples, "format": fmt, "split": split,
                                  "query_style": query_style, "prefill": prefill, "batch_size": batch_size,
                                  "judge": getattr(judge, "__name__", None), "score": score})
    frames = []
    for lm in models:
        chosen = select_samples(t, samples, seed, split_queries(lm, t, split))
        n_items = len(chosen) * len(subtasks) * (3 if t.is_contrastive else 2)
        ctx = progress(f"eval {lm.name}", n_items) if progress else contextlib.nullcontext(None)
        with ctx as advance:
            df = evaluate(lm, t, chosen, subtasks, fmt=fmt, query_style=query_style, prefill=prefill,
                          batch_size=batch_size, judge=judge, progress=advance, score=score)
        df.insert(1, "split", split)
        frames.append(df)
    results = pd.concat(frames, ignore_index=True)
    summary = summarize(results)
    decides = instruction_decides(results) if t.is_contrastive and len(subtasks) == 2 else pd.DataFrame()
    run.write_table("results", results)
    run.write_table("summary", summary)
    if not decides.empty:
        run.write_table("decides", decides)
    run.finish()
    return run, summary, decides
