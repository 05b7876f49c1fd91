"""``ivlens patch``: the command-line body of a patch sweep (registered in :mod:`ivlens.cli`).

Also runnable on its own: ``python -m ivlens.cli.patch --model organism-dpo --task adjectives ...``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console

from ivlens.cli.common import GgufOpt, RemoteOpt, RevisionOpt, ScoreOpt, ShardOpt, TrustOpt
from ivlens.specs import Backend, Correction, Dtype, Format, LinearEstimate, PatchMode, PatchTarget, Split

log = logging.getLogger(__name__)


def patch(
    ctx: typer.Context,
    model: list[str] | None = typer.Option(None, "--model", "-m", help="Model name or path; repeat to put models "
                                           "side by side (e.g. organism-base, organism-sft, organism-dpo); not "
                                           "needed with --resume."),
    task: str = typer.Option("adjectives", help="Task name or YAML spec."),
    subtask: str | None = typer.Option(None, help="Subtask whose IV is patched (default: the task's first)."),
    layers: str = typer.Option("single", help="single | pairs | triplets | N-sets (every set of up to N layers, "
                               "e.g. 4-sets) | explicit sets like '3,5,7;2,4'."),
    positions: str = typer.Option("first,last", help="Target positions: bos, first, last, t_inst, or token indices."),
    samples: int | None = typer.Option(None, help="Number of samples (drawn with --seed); default all."),
    split: Split = typer.Option("all", help="Queries: an organism's heldout or train split (from its card), or all."),
    mode: PatchMode = typer.Option("transfer", help="transfer (IV into the query-only prompt) | contrastive "
                                   "(subtask A's IV into subtask B's instructed prompt at T_inst)."),
    source_model: str | None = typer.Option(None, help="Take the IVs from this checkpoint (same shape)."),
    target: PatchTarget = typer.Option("bare", help="Query-only target: bare (the paper's) | formatted."),
    fmt: Format = typer.Option("raw", "--format", help="Prompt format."),
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
    linear_estimate: LinearEstimate = typer.Option("auto", help="The rows' first-order (attribution-patching) "
                                                   "estimate and nonlinearity = effect − estimate: auto (on for "
                                                   "sets of two or more layers) | on | off. One forward and backward "
                                                   "per sample."),
    screen: int | None = typer.Option(None, min=1, help="Rank every set by its linear estimate and run the exact "
                                      "engine only on the singles and each position's top K sets of every size "
                                      "≥ 2 (with --layers pairs, triplets or N-sets, e.g. 4-sets)."),
    correction: Correction = typer.Option("holm", help="Multiple-comparison correction."),
    alpha: float = typer.Option(0.05, help="Significance level after correction."),
    dtype: Dtype = typer.Option("float32", help="Weights' dtype."),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N | auto."),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
    backend: Backend = typer.Option("torch", help="torch (the fast engine) | nnsight (whole forwards via nnsight)."),
    out: Path | None = typer.Option(None, help="Run directory (default runs/<date>-patch-<task>-<subtask>)."),
    resume: Path | None = typer.Option(None, help="Resume this run directory: finished shards are kept; options "
                                       "not given take the run's recorded values, and a given option that differs "
                                       "is an error (memory budget, batch size, threads and figures may change)."),
    figures: bool = typer.Option(True, help="Write figures."),
    gguf_file: GgufOpt = None,
    revision: RevisionOpt = None,
    trust_remote_code: TrustOpt = False,
    shard: ShardOpt = None,
    remote: RemoteOpt = False,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (rows, FLOPs, peak memory, time on "
                                 "--device) from the models' configs, without loading weights, and exit."),
) -> None:
    """Localise instruction vectors: patch IVs of layer sets into targets, then interactions and figures."""
    from ivlens.api import run_patch
    from ivlens.cli.common import run_row_sweep
    from ivlens.patching import PatchSpec
    from ivlens.patching.interactions import strongest_single_layer

    options = {"models": tuple(model or ()), "task": task, "subtask": subtask, "layers": layers,
               "positions": positions, "samples": samples, "split": split, "mode": mode, "source_model": source_model,
               "target": target, "format": fmt, "score": score, "batch_size": batch_size,
               "memory_budget": memory_budget,
               "chunk_size": chunk_size, "seed": seed, "effect": effect, "correction": correction, "alpha": alpha,
               "dtype": dtype, "device": device, "threads": threads, "backend": backend, "figures": figures,
               "shard": shard, "gguf_file": gguf_file, "revision": revision,
               "trust_remote_code": trust_remote_code, "remote": remote, "linear_estimate": linear_estimate,
               "screen": screen}
    console = Console(stderr=True)
    spec, res = run_row_sweep(ctx, PatchSpec, options, run_patch, "patch", resume=resume, out=out, dry_run=dry_run,
                              console=console)
    if res is None:
        return
    an = res.analysis
    unread = an.single_layer[an.single_layer.zero_by_construction]
    for r in strongest_single_layer(an.single_layer).itertuples():
        console.print(f"{r.model} · {r.position}: strongest single layer {r.layer} "
                      f"(mean {spec.effect} {r.mean:.3f} ± {r.sem:.3f})")
    if not unread.empty:
        where = ", ".join(dict.fromkeys(f"layer {r.layer} at {r.position}" for r in unread.itertuples()))
        console.print(f"not ranked: {where} (no later computation reads a patch there, so its effect is 0 by "
                      "construction)")
    if not an.additivity.empty:
        for r in an.additivity.itertuples():
            criterion = (f"paper's criterion: {r.paper_criterion_power}" if r.paper_criterion_power else
                         f"{r.frac_paper_criterion:.0%} meet the paper's criterion")
            console.print(f"{r.model} · {r.position} · size {r.set_size}: {r.frac_superadditive:.0%} superadditive, "
                          f"{r.frac_subadditive:.0%} subadditive of {int(r.n_sets)} sets ({spec.correction}); "
                          f"{criterion}", highlight=False)
    from ivlens.patching.linearity import summary_lines

    for line in summary_lines(an.linearity):
        console.print(line, highlight=False)
    if not res.sweep.screen.empty:
        sc = res.sweep.screen
        kept = sc[sc["run"] & (sc.set_size >= 2)].drop_duplicates(["model", "layers"]).groupby("model").size()
        total = sc[sc.set_size >= 2].drop_duplicates(["model", "layers"]).groupby("model").size()
        for model, n in kept.items():
            console.print(f"{model}: screened {n} of {total[model]} multi-layer sets for the exact engine (top "
                          f"{spec.screen} per position and size by |linear estimate|; ranking in the screen table)",
                          highlight=False)
    console.print(f"results: {res.run.path}")


app = typer.Typer(add_completion=False)
app.command()(patch)

if __name__ == "__main__":
    app()
