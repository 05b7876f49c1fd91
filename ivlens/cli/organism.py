"""``ivlens organism build|info``: build the model organisms and show their cards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ivlens.specs import OrganismSize, OrganismVariant

organism_app = typer.Typer(help="Build and inspect the model organisms (base → SFT → DPO, OLMo-2, offline).",
                           no_args_is_help=True)


@organism_app.command("build")
def build_command(
    out: Annotated[Path | None, typer.Option("--out", help="output directory (default: the user cache)")] = None,
    seed: Annotated[int, typer.Option("--seed", help="training seed (same seed → same weights)")] = 0,
    size: Annotated[OrganismSize, typer.Option("--size", help="small (the organism) or tiny (seconds, for tests)")]
    = "small",
    variant: Annotated[OrganismVariant, typer.Option("--variant", help="gist (planted IVs, default) or natural "
                                                     "(control)")] = "gist",
    force: Annotated[bool, typer.Option("--force", help="rebuild even if a finished build exists")] = False,
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch threads to train on (the weights depend on "
                                         "them: the card records them)")] = 2,
    no_measure: Annotated[bool, typer.Option("--no-measure", help="skip measuring (card without figures)")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan (training steps, FLOPs, peak memory, "
                                          "time on this CPU) and exit")] = False,
) -> None:
    """Train base → SFT → DPO and write base/ sft/ dpo/ and card.json (prints the time it will take here first)."""
    from rich.console import Console

    from ivlens.api import run_organism
    from ivlens.cli.common import friendly_errors
    from ivlens.dry_run import human_time, organism_build_seconds
    from ivlens.organism import OrganismSpec
    from ivlens.organism.paths import is_built, organism_dir
    from ivlens.runs import check_out_dir

    with friendly_errors():
        spec = OrganismSpec(seed=seed, size=size, variant=variant, force=force, measure=not no_measure,
                            threads=threads)
        check_out_dir(out)  # a dry run refuses what the run would
        if dry_run:
            from ivlens.cli.common import print_dry_run

            print_dry_run(spec)
            return
        console = Console()
        if force or not is_built(out or organism_dir(variant)):
            console.print(f"building organism-{variant} ({size}, seed {seed}, {threads} threads): about "
                          f"{human_time(organism_build_seconds(size, variant, not no_measure, threads))} here (the "
                          "dry run's estimate for this machine as loaded now; `--dry-run` for the plan)",
                          highlight=False)
        directory = run_organism(spec, out=out)
    console.print(f"organism ({variant}) in {directory}")
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
        console.print_json((directory / "card.json").read_text())
        return
    _print_summary(console, directory)


def _print_summary(console, directory: Path) -> None:
    from rich.table import Table

    card = json.loads((directory / "card.json").read_text())
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
    table.add_column("IV transfer: subtask target L layer, IA unpatched → patched, exact")
    acc = card.get("acceptance", {})
    for stage, m in measured.items():
        cells = [f"{m[t]['train']['instructed'][s]['acc']:.2f} / {m[t]['heldout']['instructed'][s]['acc']:.2f}"
                 for t, s in subs]
        decides = " · ".join(f"{m[t]['heldout']['instructed']['decides']:.2f}" for t in m)
        ivs = [acc.get(f"{stage}/{t}/iv_transfer", {}).get("value") for t in m]
        iv = " · ".join(f"{v['subtask']} {v['target']} L{v['layer']}, {v['unpatched_ia']:.2f} → {v['ia']:.2f}, "
                        f"{v['exact']:.2f}" for v in ivs if v) or "-"
        table.add_row(stage, *cells, decides, iv)
    console.print(table)
    if acc:
        failed = [k for k, v in acc.items() if k != "all_pass" and not v["pass"]]
        console.print("acceptance: all pass" if acc.get("all_pass") else f"acceptance: failing {failed}")
