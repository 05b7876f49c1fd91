"""``ivlens eval``: the command-line body of an evaluation (registered in :mod:`ivlens.cli`); a thin caller of
:func:`ivlens.api.run_eval` whose options are :class:`~ivlens.eval.EvalSpec`'s fields
(:func:`ivlens.cli.generated.spec_command`)."""

from __future__ import annotations

from typing import Any

import typer

from ivlens.cli.common import checked_spec, console, frame_table, friendly_errors, progress_bar, shard_written
from ivlens.cli.generated import spec_command
from ivlens.eval.spec import EvalSpec


@spec_command(EvalSpec)
def eval_cmd(ctx: typer.Context, options: dict[str, Any], *, out, resume, dry_run) -> None:
    """Instruction-following evaluation: IA, accuracy and first-token ranks, with the instruction, without it
    and with the other subtask's instruction."""
    from ivlens.api import run_eval

    spec = checked_spec(ctx, EvalSpec, options, resume=resume, out=out, dry_run=dry_run)
    if spec is None:
        return
    with friendly_errors():
        run, summary, decides = run_eval(spec, out=out, resume=resume, progress=progress_bar)
    if spec.shard is not None:
        return shard_written(run.path, spec.shard)
    console.print(frame_table(summary, title=f"eval: {spec.task} ({spec.format}, split {spec.split})"))
    if not decides.empty:
        console.print(frame_table(decides, title="the instruction decides (both subtasks answered correctly)"))
    console.print(f"results: {run.path}")
