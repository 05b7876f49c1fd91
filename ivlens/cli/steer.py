"""``ivlens steer``: the command-line body of a steering sweep (registered in :mod:`ivlens.cli`); a thin caller of
:func:`ivlens.api.run_steer` whose options are :class:`~ivlens.steering.SteerSpec`'s fields
(:func:`ivlens.cli.generated.spec_command`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ivlens.cli.generated import spec_command
from ivlens.steering.spec import SteerSpec


@spec_command(SteerSpec)
def steer(
    ctx: typer.Context,
    options: dict[str, Any],
    *,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<date>-steer-<task>-<subtask>).")]
    = None,
    resume: Annotated[Path | None, typer.Option(help="Resume this run directory (finished unit files are kept; a given "
                                                "option that differs is an error).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the cost estimate (rows, FLOPs, peak memory, "
                                          "time) from the models' configs, without loading weights, and "
                                          "exit.")] = False,
) -> None:
    """Steer with IV directions: add α·v to the residual of query-only prompts, per layer and α (dose-response)."""
    from ivlens.api import run_steer
    from ivlens.cli.common import run_row_sweep

    console = Console(stderr=True)
    spec, res = run_row_sweep(ctx, SteerSpec, options, run_steer, "steer", resume=resume, out=out, dry_run=dry_run,
                              console=console)
    if res is None:
        return
    from ivlens.steering.analysis import best_per_layer

    for r in best_per_layer(res.dose).itertuples():
        console.print(f"{r.model} · layer {r.layer}: best IA (top-1) {r.ia_top1:.2f} ± {r.ia_top1_sem:.2f} "
                      f"({r.vector} at {r.position}, α = {r.alpha:g})")
    unread = res.dose[res.dose.zero_by_construction]
    if not unread.empty:
        where = ", ".join(dict.fromkeys(f"layer {r.layer} at {r.position}" for r in unread.itertuples()))
        console.print(f"not ranked: {where} (no later computation reads an edit there, so its effect is 0 by "
                      "construction)")
    console.print(f"results: {res.run.path}")
