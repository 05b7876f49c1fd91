"""``ivlens steer``: what a steering sweep prints (registered in :mod:`ivlens.cli`); the command around it, whose
options are :class:`~ivlens.steering.SteerSpec`'s fields and which runs :func:`ivlens.api.run_steer`, is
:func:`ivlens.cli.generated.row_sweep_command`'s."""

from __future__ import annotations

from rich.console import Console

from ivlens.api import SteerRunResult
from ivlens.cli.generated import row_sweep_command
from ivlens.steering.spec import SteerSpec


@row_sweep_command(SteerSpec)
def steer(spec: SteerSpec, res: SteerRunResult, console: Console) -> None:
    """Steer with IV directions: add α·v to the residual of query-only prompts, per layer and α (dose-response)."""
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
