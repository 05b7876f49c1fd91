"""``ivlens steer``: the command-line body of a steering sweep (registered in :mod:`ivlens.cli`); a thin caller of
:func:`ivlens.api.run_steer`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ivlens.cli.common import GgufOpt, RevisionOpt, ShardOpt, TrustOpt
from ivlens.specs import Dtype, Format, PatchTarget, Split


def steer(
    ctx: typer.Context,
    model: list[str] | None = typer.Option(None, "--model", "-m", help="Model name or path; repeat to put models "
                                           "side by side (organism-base, organism-sft, organism-dpo); not needed "
                                           "with --resume."),
    task: str = typer.Option("adjectives", help="Task name or YAML spec."),
    subtask: str | None = typer.Option(None, help="Subtask A: its IVs give the vectors, its label is scored "
                                       "(default: the task's first)."),
    vectors: str = typer.Option("mean,diff", help="Directions: mean (A's mean IV), diff (A − B mean IVs), "
                                "probe:RUN_DIR (the probe run's A-vs-B direction coef[A] − coef[B]), "
                                "means:RUN_DIR (A − B class means of a probe run's IVs), RUN_DIR@MODEL for another "
                                "probed model's; comma-separated."),
    alphas: str = typer.Option("0,0.5,1,2,4,8", help="Scales α, in units of the mean norm of A's IVs at the "
                               "steered layer."),
    layers: str = typer.Option("all", help="Steered layers: all, or indices such as 0,3,-1 (one per row)."),
    positions: str = typer.Option("first,last,all", help="Where α·v is added in the query-only prompt: first "
                                  "(where patching writes the IV), last, all (every token), bos, token indices."),
    samples: int | None = typer.Option(None, help="Number of samples (drawn with --seed); default all."),
    split: Split = typer.Option("all", help="Queries: an organism's heldout or train split, or all."),
    target: PatchTarget = typer.Option("bare", help="Query-only prompt: bare (the paper's) | formatted."),
    fmt: Format = typer.Option("raw", "--format", help="Prompt format."),
    max_per_subtask: int | None = typer.Option(None, help="Rephrasings per subtask for the vectors (default all)."),
    batch_size: int | None = typer.Option(None, help="Rows per bounded trie (default: from --memory-budget)."),
    memory_budget: str | None = typer.Option(None, "--memory-budget", help="Working memory beyond the weights, "
                                             "e.g. 4GB, 512MiB (default as ivlens patch); results do not depend "
                                             "on it."),
    chunk_size: int = typer.Option(25, help="Samples per result shard (the unit of --resume)."),
    seed: int = typer.Option(0, help="Seed of the sample draw."),
    dtype: Dtype = typer.Option("float32", help="Weights' dtype."),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N | auto."),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
    out: Path | None = typer.Option(None, help="Run directory (default runs/<date>-steer-<task>-<subtask>)."),
    resume: Path | None = typer.Option(None, help="Resume this run directory (finished shards are kept; a given "
                                       "option that differs is an error)."),
    figures: bool = typer.Option(True, help="Write figures."),
    gguf_file: GgufOpt = None,
    revision: RevisionOpt = None,
    trust_remote_code: TrustOpt = False,
    shard: ShardOpt = None,
    patch_run: str | None = typer.Option(None, "--patch-run", help="A finished transfer `ivlens patch` run of the "
                                         "same task, subtask, target and format: compare the steering with its "
                                         "single layers and sets (steer_vs_patch.parquet)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (rows, FLOPs, peak memory, time) from "
                                 "the models' configs, without loading weights, and exit."),
) -> None:
    """Steer with IV directions: add α·v to the residual of query-only prompts, per layer and α (dose-response)."""
    from ivlens.api import run_steer
    from ivlens.cli.common import run_row_sweep
    from ivlens.steering import SteerSpec

    options = {"models": tuple(model or ()), "task": task, "subtask": subtask, "vectors": vectors,
               "alphas": alphas, "layers": layers, "positions": positions, "samples": samples, "split": split,
               "target": target, "format": fmt, "max_per_subtask": max_per_subtask, "batch_size": batch_size,
               "memory_budget": memory_budget, "chunk_size": chunk_size, "seed": seed, "dtype": dtype,
               "device": device, "threads": threads, "figures": figures, "shard": shard, "gguf_file": gguf_file, "revision": revision,
               "trust_remote_code": trust_remote_code, "patch_run": patch_run}
    console = Console(stderr=True)
    spec, res = run_row_sweep(ctx, SteerSpec, options, run_steer, "steer", resume=resume, out=out, dry_run=dry_run,
                              console=console)
    if res is None:
        return
    from ivlens.steering.analysis import best_per_layer

    for r in best_per_layer(res.dose).itertuples():
        console.print(f"{r.model} · layer {r.layer}: best IA {r.ia:.2f} ± {r.ia_sem:.2f} "
                      f"({r.vector} at {r.position}, α = {r.alpha:g})")
    unread = res.dose[res.dose.zero_by_construction]
    if not unread.empty:
        where = ", ".join(dict.fromkeys(f"layer {r.layer} at {r.position}" for r in unread.itertuples()))
        console.print(f"not ranked: {where} (no later computation reads an edit there, so its effect is 0 by "
                      "construction)")
    console.print(f"results: {res.run.path}")
