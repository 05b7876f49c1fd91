"""``ivlens patch``: the command-line body of a patch sweep (registered in :mod:`ivlens.cli`).

Also runnable on its own: ``python -m ivlens.patching.cli --model organism-dpo --task adjectives ...``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ivlens.cli_common import ScoreOpt

log = logging.getLogger(__name__)


class RateColumn(ProgressColumn):
    """Rows per second."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:,.0f} rows/s" if task.speed else "… rows/s", style="cyan")


def progress_columns(console: Console | None = None) -> Progress:
    """A rich progress bar for patched rows: bar, done/total, rows per second, elapsed time and ETA."""
    return Progress(TextColumn("[bold]patch"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console or Console(stderr=True))


def patch(
    model: list[str] | None = typer.Option(None, "--model", "-m", help="Model name or path; repeat to put models "
                                           "side by side (e.g. organism-base, organism-sft, organism-dpo); not "
                                           "needed with --resume."),
    task: str = typer.Option("adjectives", help="Task name or YAML spec."),
    subtask: str | None = typer.Option(None, help="Subtask whose IV is patched (default: the task's first)."),
    layers: str = typer.Option("single", help="single | pairs | triplets | explicit sets like '3,5,7;2,4'."),
    positions: str = typer.Option("first,last", help="Target positions: bos, first, last, t_inst, or token indices."),
    samples: int | None = typer.Option(None, help="Number of samples (drawn with --seed); default all."),
    mode: str = typer.Option("transfer", help="transfer (IV into the query-only prompt) | contrastive (subtask A's "
                             "IV into subtask B's instructed prompt at T_inst)."),
    source_model: str | None = typer.Option(None, help="Take the IVs from this checkpoint (same shape)."),
    target: str = typer.Option("bare", help="Query-only target: bare (the paper's) | formatted."),
    fmt: str = typer.Option("raw", "--format", help="Prompt format: raw | chat."),
    batch_size: int | None = typer.Option(None, help="Rows per bounded trie of batched layer calls (default: from "
                                          "--memory-budget)."),
    memory_budget: str | None = typer.Option(None, "--memory-budget", help="Working memory beyond the weights, e.g. "
                                             "4GB, 512MiB, 1.5G (default: a quarter of the free RAM, at most 1 GiB; "
                                             "half the free GPU memory on CUDA). Batch sizes and engine passes "
                                             "follow from it; results do not."),
    chunk_size: int = typer.Option(25, help="Samples per result shard (the unit of --resume)."),
    seed: int = typer.Option(0, help="Seed of the sample draw."),
    score: ScoreOpt = "first-token",
    effect: str = typer.Option("delta_logit_vs_target", help="Effect column for interactions and figures."),
    correction: str = typer.Option("holm", help="Multiple-comparison correction: holm | bh."),
    alpha: float = typer.Option(0.05, help="Significance level after correction."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16."),
    device: str = typer.Option("cpu", help="cpu | cuda | auto."),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
    backend: str = typer.Option("torch", help="torch (the fast engine) | nnsight (whole forwards via nnsight)."),
    out: Path | None = typer.Option(None, help="Run directory (default runs/<date>-patch-<task>-<subtask>)."),
    resume: Path | None = typer.Option(None, help="Resume this run directory: finished shards are kept and the "
                                       "run's recorded options are used."),
    figures: bool = typer.Option(True, help="Write figures."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (rows, FLOPs, peak memory, time on "
                                 "--device) from the models' configs, without loading weights, and exit."),
) -> None:
    """Localise instruction vectors: patch IVs of layer sets into targets, then interactions and figures."""
    args = dict(locals())
    dry = args.pop("dry_run")
    from ivlens.cli_common import friendly_errors
    from ivlens.scoped import torch_threads

    with friendly_errors():
        try:
            if dry:
                from ivlens.dry_run import patch_dry_run

                return patch_dry_run(args)
            with torch_threads(args["threads"]):
                _patch(**args)
        except ValueError as e:  # bad layer/position specs, modes, sample indices: one line, exit code 2
            Console(stderr=True).print(f"[bold red]error:[/] {e}")
            raise typer.Exit(2) from None


def _patch(model, task, subtask, layers, positions, samples, mode, source_model, target, fmt, batch_size, memory_budget,
           chunk_size, seed, score, effect, correction, alpha, dtype, device, threads, backend, out, resume,
           figures) -> None:

    from ivlens.budget import parse_bytes
    from ivlens.models.load import load_model
    from ivlens.runs import RunDir

    from .analysis import analyse
    from .plan import PatchPlan
    from .sweep import patch_sweep

    console = Console(stderr=True)
    if memory_budget is not None and memory_budget.strip().lower() != "auto":
        parse_bytes(memory_budget)  # a bad value fails here, before any model loads
    if resume is not None:
        run = RunDir.open(resume)
        a = dict(run.manifest["args"])
        if memory_budget is not None:  # memory does not change results: the new budget applies
            a["memory_budget"] = memory_budget
        console.print(f"resuming {run.path} with its recorded options")
    else:
        if not model:
            raise ValueError("give at least one --model (or --resume RUN)")
        a = {"model": list(model), "task": task, "subtask": subtask, "layers": layers, "positions": positions,
             "samples": samples, "mode": mode, "source_model": source_model, "target": target, "fmt": fmt,
             "batch_size": batch_size, "memory_budget": memory_budget, "chunk_size": chunk_size, "seed": seed,
             "score": score, "effect": effect, "correction": correction, "alpha": alpha, "dtype": dtype, "device": device, "backend": backend}
        run = None
    lms = [load_model(m, dtype=a["dtype"], device=a["device"]) for m in a["model"]]
    src = load_model(a["source_model"], dtype=a["dtype"], device=a["device"]) if a["source_model"] else None
    for lm in lms:  # fail on bad specs before a run directory is made
        PatchPlan.build(a["layers"], a["positions"], lm.adapter.n_layers)
    if run is None:
        run = RunDir.create("patch", f"{a['task']}-{a['subtask'] or 'default'}", out=out, args=a,
                            models=[lm.describe() for lm in lms] + ([src.describe()] if src else []),
                            task=a["task"], seed=a["seed"])
    with progress_columns(console) as bar:
        tid = bar.add_task("rows", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(tid, completed=done, total=total)

        res = patch_sweep(lms, a["task"], a["subtask"], layers=a["layers"], positions=a["positions"],
                          samples=a["samples"], mode=a["mode"], source_model=src, target=a["target"], fmt=a["fmt"],
                          batch_size=a["batch_size"], memory_budget=a.get("memory_budget"),
                          chunk_size=a["chunk_size"], seed=a["seed"], run=run, device=a["device"],
                          backend=a.get("backend", "torch"), score=a.get("score", "first-token"),
                          progress=progress)
    an = analyse(res.rows, effect=a["effect"], correction=a["correction"], alpha=a["alpha"], run=run,
                 make_figures=figures)
    run.finish(engine={k: v.to_dict() for k, v in res.stats.items()}, n_rows=len(res.rows))
    best = an.single_layer.loc[an.single_layer.groupby(["model", "position"], sort=False)["mean"].idxmax()]
    for r in best.itertuples():
        console.print(f"{r.model} · {r.position}: strongest single layer {r.layer} "
                      f"(mean {a['effect']} {r.mean:.3f} ± {r.sem:.3f})")
    if not an.additivity.empty:
        for r in an.additivity.itertuples():
            console.print(f"{r.model} · {r.position} · size {r.set_size}: {r.frac_superadditive:.0%} superadditive, "
                          f"{r.frac_subadditive:.0%} subadditive of {int(r.n_sets)} sets ({a['correction']})")
    console.print(f"results: {run.path}")


app = typer.Typer(add_completion=False)
app.command()(patch)

if __name__ == "__main__":
    app()
