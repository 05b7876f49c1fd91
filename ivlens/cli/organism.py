"""``ivlens organism build|info``: build the model organisms and show their cards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ivlens.cli.generated import spec_command
from ivlens.organism.spec import OrganismSpec
from ivlens.specs import OrganismVariant

organism_app = typer.Typer(help="Build and inspect the model organisms (base → SFT → DPO, OLMo-2, offline).",
                           no_args_is_help=True)


@organism_app.command("build")
@spec_command(OrganismSpec)
def build_command(
    ctx: typer.Context,
    options: dict[str, Any],
    *,
    out: Annotated[Path | None, typer.Option("--out", help="output directory (default: the user cache)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the cost estimate (training steps, FLOPs, "
                                          "peak memory, time on this CPU) and exit")] = False,
) -> None:
    """Train base → SFT → DPO and write base/ sft/ dpo/ and card.json (prints the time it will take here first)."""
    from rich.console import Console

    from ivlens.api import run_organism
    from ivlens.cli.common import checked_spec, friendly_errors, print_dry_run
    from ivlens.dry_run import human_time, organism_build_seconds
    from ivlens.organism.build import reusable
    from ivlens.organism.paths import organism_dir

    spec = checked_spec(ctx, OrganismSpec, options, resume=None, out=out, dry_run=False)
    if spec is None:
        return
    with friendly_errors():
        console = Console()
        directory = out or organism_dir(spec.variant)
        build = spec.force or not reusable(directory, seed=spec.seed, size=spec.size, threads=spec.threads,
                                           measure=spec.measure)  # another build there is refused, also by --dry-run
        if dry_run:
            if build:
                print_dry_run(spec)
            else:
                console.print(f"organism-{spec.variant} ({spec.size}, seed {spec.seed}, {spec.threads} threads) is "
                              f"built in {directory}: this command reuses it, nothing to compute (`--force "
                              "--dry-run` for what a rebuild costs)", highlight=False)
            return
        if build:
            seconds = organism_build_seconds(spec.size, spec.variant, spec.measure, spec.threads)
            console.print(f"building organism-{spec.variant} ({spec.size}, seed {spec.seed}, {spec.threads} threads): "
                          f"about {human_time(seconds)} here (the dry run's estimate for this machine as loaded now; "
                          "`--dry-run` for the cost estimate)", highlight=False)
        directory = run_organism(spec, out=out)
    console.print(f"organism ({spec.variant}) in {directory}")
    _print_summary(console, directory)


@organism_app.command("info")
def info_command(
    variant: Annotated[OrganismVariant, typer.Option("--variant", help="which organism")] = "gist",
    path: Annotated[Path | None, typer.Option("--path", help="a build directory (default: the user cache)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the whole card")] = False,
    recheck: Annotated[bool, typer.Option("--recheck", help="recompute the acceptance checks from the card's "
                                          "figures and rewrite the card")] = False,
) -> None:
    """Show where an organism is and what its card measured."""
    from rich.console import Console

    from ivlens.organism.paths import is_built, organism_dir

    console = Console()
    directory = path or organism_dir(variant)
    if not is_built(directory):
        flag = "" if variant == "gist" else f" --variant {variant}"
        console.print(f"no organism in {directory}: run `ivlens organism build{flag}`")
        raise typer.Exit(1)
    if recheck:
        from ivlens.organism.build import refresh_acceptance

        refresh_acceptance(directory)
    if as_json:
        from ivlens.organism.card import read_card

        console.print_json(json.dumps(read_card(directory)))  # an earlier build's card as this ivlens writes it
        return
    _print_summary(console, directory)


def _print_summary(console, directory: Path) -> None:
    from rich.table import Table

    from ivlens.organism.card import read_card

    card = read_card(directory)
    console.print(f"version {card['version']} · variant {card['variant']} · size {card['size']} · "
                  f"seed {card['seed']} · {card['model']['parameters']:,} parameters · "
                  f"{card['timing']['total']:.0f} s")
    measured = card.get("measured") or {}
    if not measured:
        return
    table = Table(title="first-answer accuracy with the instruction (train / held-out queries)")
    table.add_column("stage")
    subs = [(t, s) for t, m in measured["sft"].items() for s in m["train"]["instructed"]
            if isinstance(m["train"]["instructed"][s], dict)]
    for _task, s in subs:
        table.add_column(s)
    table.add_column("decides (held-out)")
    table.add_column("IV transfer: subtask target L layer, IA (top-1) unpatched → patched, exact")
    acc = card.get("acceptance", {})
    for stage, m in measured.items():
        cells = [f"{m[t]['train']['instructed'][s]['acc']:.2f} / {m[t]['heldout']['instructed'][s]['acc']:.2f}"
                 for t, s in subs]
        decides = " · ".join(f"{m[t]['heldout']['instructed']['decides']:.2f}" for t in m)
        ivs = [acc.get(f"{stage}/{t}/iv_transfer", {}).get("value") for t in m]
        iv = " · ".join(f"{v['subtask']} {v['target']} L{v['layer']}, {v['unpatched_ia_top1']:.2f} → "
                        f"{v['ia_top1']:.2f}, {v['exact']:.2f}" for v in ivs if v) or "-"
        table.add_row(stage, *cells, decides, iv)
    console.print(table)
    if acc:
        failed = [k for k, v in acc.items() if k != "all_pass" and not v["pass"]]
        console.print("acceptance: all pass" if acc.get("all_pass") else f"acceptance: failing {failed}")
