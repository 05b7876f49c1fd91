"""``ivlens probe``: the CLI body (registered in ``ivlens.cli``); a thin wrapper over :func:`ivlens.api.run_probe`
whose options are :class:`~ivlens.probing.ProbeSpec`'s fields (:func:`ivlens.cli.generated.spec_command`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ivlens.cli.common import checked_spec, console, frame_table, friendly_errors, shard_written
from ivlens.cli.generated import spec_command
from ivlens.probing.spec import ProbeSpec


@spec_command(ProbeSpec)
def probe(
    ctx: typer.Context,
    options: dict[str, Any],
    *,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the cost estimate (forwards, FLOPs, peak memory, "
                                          "time) from the models' configs, without loading weights, and "
                                          "exit")] = False,
    out,
    resume,
) -> None:
    """Linear probes, LDA and cosine similarity of instruction vectors (residual at T_inst) by layer,
    for every --model side by side."""
    from ivlens.api import run_probe

    spec = checked_spec(ctx, ProbeSpec, options, resume=resume, out=out, dry_run=dry_run)
    if spec is None:
        return
    with friendly_errors():
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

