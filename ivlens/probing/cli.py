"""``ivlens probe``: the CLI body (registered in ``ivlens.cli``); a thin wrapper over :func:`probe_run`."""

from __future__ import annotations

from typing import Annotated

import typer

from ivlens.cli_common import (
    DeviceOpt,
    DtypeOpt,
    FormatOpt,
    ModelOpt,
    OutOpt,
    console,
    frame_table,
    friendly_errors,
)


def probe(
    model: ModelOpt,
    tasks: Annotated[str, typer.Option("--tasks", "-t", help="comma-separated built-in tasks or YAML specs")]
    = "adjectives,animals",
    layers: Annotated[str, typer.Option("--layers", help="all | comma-separated layers (negative from the end)")]
    = "all",
    varying: Annotated[str, typer.Option("--varying", help="instructions (rephrasings) | labels (label-space "
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
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "cpu",
) -> None:
    """Linear probes, LDA and cosine similarity of instruction vectors (residual at T_inst) by layer,
    for every --model side by side."""
    from ivlens.probing.instructions import read_user_instructions
    from ivlens.probing.probes import ProbeConfig
    from ivlens.probing.run import probe_run

    with friendly_errors():
        if varying not in ("instructions", "labels"):
            raise typer.BadParameter("use instructions or labels", param_hint="--varying")
        user = dict(read_user_instructions(s) for s in instructions or [])
        task_list = [t.strip() for t in tasks.split(",") if t.strip()]
        fig_at = [int(x) for x in figure_layers.split(",")] if figure_layers else None
        if dry_run:
            from ivlens.dry_run import probe_dry_run

            probe_dry_run(model, task_list, layers=layers, varying=varying, user_instructions=user, fmt=fmt,
                          batch_size=batch_size, folds=folds, max_per_subtask=max_per_subtask, dtype=dtype,
                          device=device, memory_budget=memory_budget)
            return
        res = probe_run(model, task_list, layers=layers, varying=varying, out=out, user_instructions=user,
                        fmt=fmt, batch_size=batch_size, cfg=ProbeConfig(folds=folds, seed=seed),
                        figure_at=fig_at, max_per_subtask=max_per_subtask, memory_budget=memory_budget,
                        load_kwargs={"dtype": dtype, "device": device})
    acc = res.accuracy[res.accuracy.target == "subtask"]
    main = acc[acc.probe == acc.probe.iloc[0]]
    table = main.pivot(index="layer", columns="model", values="cv_mean")[list(dict.fromkeys(main.model))]
    console.print(frame_table(table.reset_index().astype({"layer": str}), title=f"probe '{main.probe.iloc[0]}': CV accuracy by layer "
                                                         f"(majority {main.majority.mean():.2f}, shuffled "
                                                         f"{main.shuffled_mean.mean():.2f})"))
    console.print(f"results: {res.run.path}")
