"""``ivlens patch``: what a patch sweep prints (registered in :mod:`ivlens.cli`); the command around it, whose
options are :class:`~ivlens.patching.PatchSpec`'s fields and which runs :func:`ivlens.api.run_patch`, is
:func:`ivlens.cli.generated.row_sweep_command`'s.

Also runnable on its own: ``python -m ivlens.cli.patch --model organism-dpo --task adjectives ...``.
"""

from __future__ import annotations

import logging

import typer
from rich.console import Console

from ivlens.api import PatchResult
from ivlens.cli.generated import row_sweep_command
from ivlens.patching.spec import PatchSpec

log = logging.getLogger(__name__)


@row_sweep_command(PatchSpec)
def patch(spec: PatchSpec, res: PatchResult, console: Console) -> None:
    """Localise instruction vectors: patch IVs of layer sets into targets, then interactions and figures."""
    from ivlens.patching.interactions import strongest_single_layer

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
