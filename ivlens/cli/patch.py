"""``ivlens patch``: the command-line body of a patch sweep (registered in :mod:`ivlens.cli`); its options are
:class:`~ivlens.patching.PatchSpec`'s fields (:func:`ivlens.cli.generated.spec_command`).

Also runnable on its own: ``python -m ivlens.cli.patch --model organism-dpo --task adjectives ...``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ivlens.cli.generated import spec_command
from ivlens.patching.spec import PatchSpec

log = logging.getLogger(__name__)


@spec_command(PatchSpec)
def patch(
    ctx: typer.Context,
    options: dict[str, Any],
    *,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<date>-patch-<task>-<subtask>).")]
    = None,
    resume: Annotated[Path | None, typer.Option(help="Resume this run directory: finished unit files are kept; options "
                                                "not given take the run's recorded values, and a given option that "
                                                "differs is an error (memory budget, batch size, threads and "
                                                "figures may change).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the cost estimate (rows, FLOPs, peak memory, "
                                          "time on --device) from the models' configs, without loading weights, and "
                                          "exit.")] = False,
) -> None:
    """Localise instruction vectors: patch IVs of layer sets into targets, then interactions and figures."""
    from ivlens.api import run_patch
    from ivlens.cli.common import run_row_sweep
    from ivlens.patching.interactions import strongest_single_layer

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
            fixed = (f", {int(r.n_additive_by_construction)} more additive by construction (untested)"
                     if getattr(r, "n_additive_by_construction", 0) else "")
            shares = (f"{r.frac_superadditive:.0%} superadditive, {r.frac_subadditive:.0%} subadditive"
                      if r.n_tested else "no set tested")
            console.print(f"{r.model} · {r.position} · size {r.set_size}: {shares} of {int(r.n_tested)} tested sets "
                          f"({spec.correction}){fixed}; {criterion}", highlight=False)
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
