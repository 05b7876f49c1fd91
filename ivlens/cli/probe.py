"""``ivlens probe``: the CLI body (registered in ``ivlens.cli``); a thin wrapper over :func:`ivlens.api.run_probe`."""

from __future__ import annotations

from typing import Annotated

import typer

from ivlens.cli.common import (
    DeviceOpt,
    DtypeOpt,
    FormatOpt,
    GgufOpt,
    ModelOpt,
    OutOpt,
    RemoteOpt,
    ResumeOpt,
    RevisionOpt,
    ShardOpt,
    TrustOpt,
    build_spec,
    console,
    frame_table,
    friendly_errors,
    shard_written,
)
from ivlens.runs import check_out_dir
from ivlens.specs import Varying


def probe(
    ctx: typer.Context,
    model: ModelOpt = None,
    tasks: Annotated[str, typer.Option("--tasks", "-t", help="comma-separated built-in tasks or YAML specs")]
    = "adjectives,animals",
    layers: Annotated[str, typer.Option("--layers", help="all | comma-separated layers (negative from the end)")]
    = "all",
    varying: Annotated[Varying, typer.Option("--varying", help="instructions (rephrasings) or labels (label-space "
                                             "variants: yes/no -> Y/N, ...)")] = "instructions",
    instructions: Annotated[list[str] | None, typer.Option(
        "--instructions", help="extra class from a CSV index,instruction: NAME=PATH (repeatable)")] = None,
    max_per_subtask: Annotated[int | None, typer.Option("--max-per-subtask", help="first N rephrasings of "
                                                        "each file (quick runs; default all)")] = None,
    folds: Annotated[int, typer.Option("--folds", help="stratified CV folds")] = 5,
    figure_layers: Annotated[str | None, typer.Option("--figure-layers", help="layers of the LDA/PCA scatters "
                                                      "and heatmaps (default first, middle, last)")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="instructions per forward (default: as many "
                                                   "as fit --memory-budget)")] = None,
    memory_budget: Annotated[str | None, typer.Option("--memory-budget", help="working memory beyond the weights "
                                                      "(4GB, 512MiB; default: a safe share of free memory)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan (forwards, FLOPs, peak memory, time) "
                                          "from the models' configs, without loading weights, and exit")] = False,
    fmt: FormatOpt = "raw",
    seed: Annotated[int, typer.Option("--seed", help="seed of the CV folds and label shuffles")] = 0,
    out: OutOpt = None,
    resume: ResumeOpt = None,
    gguf_file: GgufOpt = None,
    revision: RevisionOpt = None,
    trust_remote_code: TrustOpt = False,
    shard: ShardOpt = None,
    remote: RemoteOpt = False,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "cpu",
) -> None:
    """Linear probes, LDA and cosine similarity of instruction vectors (residual at T_inst) by layer,
    for every --model side by side."""
    from ivlens.api import run_probe
    from ivlens.probing import ProbeSpec

    with friendly_errors():
        from ivlens.probing.instructions import read_user_instructions

        user = {name: str(path) for name, path in map(read_user_instructions, instructions or [])}
        fig_at = tuple(_int(x, "--figure-layers") for x in figure_layers.split(",")) if figure_layers else None
        options = {"models": tuple(model or ()), "tasks": tuple(t.strip() for t in tasks.split(",") if t.strip()),
                   "layers": layers, "varying": varying, "instructions": user, "max_per_subtask": max_per_subtask,
                   "folds": folds, "figure_layers": fig_at, "batch_size": batch_size, "memory_budget": memory_budget,
                   "format": fmt, "seed": seed, "dtype": dtype, "device": device, "shard": shard, "gguf_file": gguf_file, "revision": revision,
               "trust_remote_code": trust_remote_code,
                   "remote": remote}
        spec = build_spec(ctx, ProbeSpec, options, resume, params={"models": "model", "format": "fmt",
                                                              "instructions": "instructions"})
        check_out_dir(out)  # a dry run refuses what the run would
        if dry_run:
            from ivlens.cli.common import print_dry_run

            print_dry_run(spec)
            return
        res = run_probe(spec, out=out, resume=resume)
    if spec.shard is not None:
        return shard_written(res.run.path, spec.shard)
    acc = res.accuracy[res.accuracy.target == "subtask"]
    main = acc[acc.probe == acc.probe.iloc[0]]
    table = main.pivot(index="layer", columns="model", values="cv_mean")[list(dict.fromkeys(main.model))]
    console.print(frame_table(table.reset_index().astype({"layer": str}), title=f"probe '{main.probe.iloc[0]}': CV accuracy by layer "
                                                         f"(majority {main.majority.mean():.2f}, shuffled "
                                                         f"{main.shuffled_mean.mean():.2f})"))
    console.print(f"results: {res.run.path}")


def _int(text: str, option: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a layer number", param_hint=option) from None
