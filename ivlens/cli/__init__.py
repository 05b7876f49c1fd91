"""The ``ivlens`` command line. Each command is a thin wrapper over the Python API."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from ivlens.cli.common import (
    DryRunOpt,
    FormatOpt,
    GgufOpt,
    cli_logging,
    console,
    err_console,
    frame_table,
    friendly_errors,
)

Executor = Literal["local", "ray"]

app = typer.Typer(help="ivlens: instruction vectors, layer patching, probes and exact path tracing for causal LMs.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
tasks_app = typer.Typer(help="List, show and check tasks (built-in or YAML specs).", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
from ivlens.cli.organism import organism_app  # noqa: E402

app.add_typer(organism_app, name="organism")


@app.callback()
def _main(ctx: typer.Context,
          verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log progress details and show "
                                                "third-party progress bars")] = False) -> None:
    ctx.with_resource(cli_logging(verbose))


# ----------------------------------------------------------------------------- tasks
@tasks_app.command("list")
def tasks_list() -> None:
    """List the built-in tasks."""
    import pandas as pd

    from ivlens.tasks import builtin_names, load_task

    rows = []
    for name in builtin_names():
        t = load_task(name)
        rows.append({"task": name, "field": t.field, "samples": len(t.samples), "subtasks": ", ".join(t.subtasks),
                     "rephrasings": sum(len(s.rephrasings) for s in t.subtasks.values()), "source": t.attribution})
    console.print(frame_table(pd.DataFrame(rows), title="built-in tasks"))


@tasks_app.command("show")
def tasks_show(task: Annotated[str, typer.Argument(help="built-in name or YAML spec path")],
               n: Annotated[int, typer.Option("--n", help="samples to print")] = 5) -> None:
    """Show a task: subtasks, instructions, label spaces, example prompts."""
    with friendly_errors():
        from ivlens.tasks import load_task

        t = load_task(task)
    console.print(f"[bold]{t.name}[/]  field={t.field!r}  samples={len(t.samples)}  source={t.source}")
    if t.attribution:
        console.print(f"attribution: {t.attribution}")
    for st in t.subtasks.values():
        console.print(f"\n[bold]{st.name}[/]: {st.instruction}")
        console.print(f"  rephrasings: {len(st.rephrasings)}  label space ({len(st.label_space)}): "
                      f"{', '.join(st.label_space[:15])}{' ...' if len(st.label_space) > 15 else ''}")
        for s in t.samples[:n]:
            console.print(f"  {st.instruction} {t.field}: {s.query}. Answer: [green]{' | '.join(s.answers[st.name])}[/]",
                          highlight=False)
    for w in t.warnings:
        console.print(f"[yellow]warning:[/] {w}")


@tasks_app.command("check")
def tasks_check(spec: Annotated[str, typer.Argument(help="built-in name or YAML spec path")],
                model: Annotated[str | None, typer.Option("--model", "-m", help="check against this model's tokenizer")] = None,
                gguf_file: GgufOpt = None, fmt: FormatOpt = "raw") -> None:
    """Validate a task (columns, cells, instructions) and, with --model, its labels and prompt lengths."""
    with friendly_errors():
        from ivlens.tasks import load_task
        from ivlens.tasks.validate import check_task

        t = load_task(spec)
        console.print(f"{t.name}: {len(t.samples)} samples, subtasks {', '.join(t.subtasks)}: file checks passed")
        for w in t.warnings:
            console.print(f"[yellow]warning:[/] {w}")
        if model is None:
            return
        from transformers import AutoTokenizer

        from ivlens.models.load import resolve_name

        path, gguf = resolve_name(model, gguf_file)
        tok = AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf} if gguf else {}))
        max_len = getattr(tok, "model_max_length", None)
        max_len = max_len if max_len and max_len < 10**7 else None
        issues = check_task(t, tok, max_len, fmt)
    for issue in issues:
        style = "red" if issue.severity == "error" else "yellow"
        console.print(f"[{style}]{issue}[/]", highlight=False)
    errors = sum(i.severity == "error" for i in issues)
    console.print(f"{errors} error(s), {len(issues) - errors} warning(s) with the tokenizer of {model}")
    if errors:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- eval
from ivlens.cli.eval import eval_cmd  # noqa: E402

app.command("eval")(eval_cmd)


# ----------------------------------------------------------------------------- study
@app.command("run")
def run_cmd(
    study_file: Annotated[str, typer.Argument(help="the study: a YAML file of models × tasks × analyses "
                                                   "(examples/organism.yaml is the main job)")],
    out: Annotated[str | None, typer.Option("--out", help="the study directory (default runs/<study name>); a "
                                            "rerun skips finished steps and resumes unfinished ones")] = None,
    dry_run: DryRunOpt = False,
    executor: Annotated[Executor, typer.Option("--executor", help="where steps run: here, one after another "
                                               "(local), or as Ray tasks (ray)")] = "local",
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="a Ray cluster to join (default: "
                                                    "start a local instance)")] = None,
    shards: Annotated[int, typer.Option("--shards", min=1, help="with --executor ray: Ray tasks per step, each a "
                                        "share of the step's units of work (models × samples)")] = 2,
    jobs: Annotated[str, typer.Option("--jobs", help="with --executor local: steps at a time, each in a worker "
                                      "process with cores/jobs torch threads; auto: the cores, fewer when the "
                                      "models would not fit in memory once per worker, 1 on a GPU")] = "auto",
) -> None:
    """Run a study: every step (one analysis run) not done yet, into one study directory, then its report."""
    from ivlens.study import load_study, run_study

    with friendly_errors():
        study = load_study(study_file)
        if dry_run:
            from ivlens.study.dry_run import dry_run_study

            dry_run_study(study, console)
            return
        if executor == "ray":
            from ivlens.study.ray_executor import RayExecutor

            chosen = RayExecutor(address=ray_address, shards=shards)
        else:
            from ivlens.study import local_executor

            chosen = local_executor(study, jobs)
        result = run_study(study, out, executor=chosen,
                           say=lambda line: err_console.print(line, highlight=False))
    rows = [{"step": rel, "before": state, "seconds": result.seconds.get(rel, 0.0)}
            for rel, state in result.states.items()]
    import pandas as pd

    console.print(frame_table(pd.DataFrame(rows), title=f"study {study.name}", floatfmt="{:.1f}"))
    from ivlens.organism.card import study_organism_warnings

    for line in study_organism_warnings(result.directory):
        err_console.print(f"[bold yellow]warning:[/] {line}", highlight=False)
    console.print(f"[bold green]study finished.[/] results: {result.directory}")
    console.print(f"report: {result.report}")


# ----------------------------------------------------------------------------- merge
@app.command("merge")
def merge_cmd(
    runs: Annotated[list[str], typer.Argument(help="the run directories of the shards (--shard 0/n … n-1/n)")],
    out: Annotated[str, typer.Option("--out", help="the merged run directory (new)")],
) -> None:
    """Join the shards of one sweep (eval, patch, steer, probe, trace --compare run with --shard i/n, e.g. as SLURM
    array jobs) into one run equal to the unsharded run, and finish it (tables, figures, manifest)."""
    from ivlens.merge import merge_runs

    with friendly_errors():
        path = merge_runs(runs, out)
    console.print(f"merged {len(runs)} shards: {path}")


# ----------------------------------------------------------------------------- report
@app.command("report")
def report_cmd(
    run_dir: Annotated[str, typer.Argument(help="a run directory, or a directory of run directories (a study)")],
    out: Annotated[str | None, typer.Option("--out", help="the HTML file to write (default RUN_DIR/report.html)")]
    = None,
) -> None:
    """Write one self-contained HTML report (figures and tables embedded; opens offline) of finished runs."""
    from ivlens.analyses import report_sections
    from ivlens.report import build_report

    with friendly_errors():
        path = build_report(run_dir, out, sections=report_sections())
    console.print(f"report: {path}")


# ----------------------------------------------------------------------------- analysis commands
# Each analysis lives in its own package; its CLI function (options generated from its spec) is registered here.
from ivlens.cli.patch import patch  # noqa: E402

app.command("patch")(patch)

from ivlens.cli.trace import trace  # noqa: E402

app.command("trace")(trace)

from ivlens.cli.probe import probe  # noqa: E402

app.command("probe")(probe)

from ivlens.cli.steer import steer  # noqa: E402

app.command("steer")(steer)

# Every other registered analysis: its command generated from its spec (ivlens.cli.generated).
from ivlens.analyses import ANALYSES  # noqa: E402
from ivlens.cli.generated import analysis_command  # noqa: E402

_written = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
for _analysis in ANALYSES:
    if _analysis.name not in _written:
        app.command(_analysis.name)(analysis_command(_analysis))


def main() -> None:
    """The ``ivlens`` command: the typer app, with usage errors (a bad choice, a malformed number, a missing
    option) reported as one red line and exit code 2, like every other input error."""
    import sys

    from typer._click.exceptions import UsageError  # typer's own click: its usage errors (no public alias)

    from ivlens.cli.common import error_line

    try:
        code = app(standalone_mode=False)
    except UsageError as e:
        error_line(e.format_message().replace("Value error, ", ""))
        sys.exit(2)
    except typer.Abort:
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
