"""Options and helpers shared by the CLI commands: model loading options, console, progress, errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ivlens.runs import check_out_dir
from ivlens.specs import Format, FormatField, ModelsSpec, Spec

console = Console(stderr=False)
err_console = Console(stderr=True)
_verbose = False  # set by --verbose (cli_logging): the error boundary then shows tracebacks

# The options of the commands that are not a spec's (a spec's options are generated from its fields,
# ivlens.cli.generated); the two taken from a spec field keep that field's help.
GgufOpt = Annotated[str | None, typer.Option("--gguf-file", help=ModelsSpec.model_fields["gguf_file"].description)]
FormatOpt = Annotated[Format, typer.Option("--format", help=FormatField.__metadata__[0].description)]
OutOpt = Annotated[str | None, typer.Option("--out", help="run directory (default runs/<date>-<command>-<name>)")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="print the cost estimate (forward passes, FLOPs, "
                                         "peak memory, time on --device) from the models' configs, without loading "
                                         "weights, and exit")]
ResumeOpt = Annotated[Path | None, typer.Option("--resume", help="resume this run directory: finished unit files are "
                                                "kept; options not given take the run's recorded values, and a "
                                                "given option that differs is an error")]


@contextmanager
def cli_logging(verbose: bool = False) -> Iterator[None]:
    """Logging for one CLI invocation: ivlens's records through rich on stderr (INFO with ``--verbose``,
    else WARNING), third-party progress bars and chatter off unless ``--verbose``
    (:func:`ivlens.scoped.quiet_libraries`); ``--verbose`` also makes the error boundary show tracebacks. The
    root logger is restored afterwards, so invoking the CLI in-process (tests, notebooks) leaves logging as it
    was."""
    from ivlens.scoped import quiet_libraries

    global _verbose
    root = logging.getLogger()
    handlers, level, was_verbose = list(root.handlers), root.level, _verbose
    _verbose = verbose
    root.handlers = [RichHandler(console=err_console, show_path=False, show_time=False)]
    root.handlers[0].setFormatter(logging.Formatter("%(message)s"))
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        with quiet_libraries(verbose):
            yield
    finally:
        root.handlers, root.level, _verbose = handlers, level, was_verbose


def build_spec(ctx: typer.Context, spec_cls: type[Spec], options: dict[str, Any], resume: Path | None = None) -> Spec:
    """The spec of a command from its options (``{field: value}``; the command's parameters are named like the
    fields, :func:`ivlens.cli.generated.spec_command`). With ``--resume``, the run's stored spec, overridden by
    the options given on the command line only, so ``--resume RUN`` alone continues the run and a given option
    that differs is reported."""
    if resume is None:
        return spec_cls(**options)
    from ivlens.analyses import stored_spec

    def given_on_command_line(field: str) -> bool:
        source = ctx.get_parameter_source(field)
        return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")

    given = {f: v for f, v in options.items() if given_on_command_line(f)}
    return spec_cls(**{**stored_spec(resume).model_dump(), **given})


def checked_spec(ctx: typer.Context, spec_cls: type[Spec], options: dict[str, Any], *, resume: Path | None,
                 out: str | Path | None, dry_run: bool) -> Spec | None:
    """What every analysis command does first: its spec from the options (:func:`build_spec`; bad input is one error
    line, exit 2) and ``--out`` checked; with ``--dry-run``, the cost estimate printed and ``None`` (nothing to
    run)."""
    with friendly_errors():
        spec = build_spec(ctx, spec_cls, options, resume)
        check_out_dir(out)  # a dry run refuses what the run would
        if dry_run:
            print_dry_run(spec)
            return None
    return spec


class RateColumn(ProgressColumn):
    """Items per second."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f}/s" if task.speed else "  ?/s", style="progress.data.speed")


@contextmanager
def progress_bar(description: str, total: int) -> Iterator:
    """A rich progress bar with rate and ETA; yields ``advance(n)``."""
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*cols, console=err_console, transient=False) as p:
        tid = p.add_task(description, total=total)
        yield lambda n=1: p.advance(tid, n)


def frame_table(df, title: str | None = None, floatfmt: str = "{:.3f}") -> Table:
    """A pandas DataFrame as a rich table that stays readable in a narrow terminal: text cells (the values that
    identify a row: model, task, condition) fold onto further lines instead of being cut to "smollm2…", numbers
    never wrap, and a text column with one value in every row moves into the title (``model: smollm2-…``)."""
    constant = [c for c in df.columns if len(df) > 1 and df[c].dtype.kind not in "iufb" and df[c].nunique() == 1]
    if constant:
        shared = " · ".join(f"{c}: {df[c].iloc[0]}" for c in constant)
        title = f"{title}\n{shared}" if title else shared
        df = df.drop(columns=constant)
    table = Table(title=title, show_lines=False)
    for col in df.columns:
        numeric = df[col].dtype.kind in "iufb"
        table.add_column(str(col), justify="right" if numeric else "left", overflow="fold", no_wrap=numeric,
                         min_width=len(str(col)) if numeric else None)
    for _, row in df.iterrows():
        table.add_row(*[floatfmt.format(v) if isinstance(v, float) else str(v) for v in row.tolist()])
    return table


def error_line(message: str) -> None:
    """Print one red ``error:`` line (user text is never rich markup)."""
    err_console.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", highlight=False, soft_wrap=True)


@contextmanager
def friendly_errors() -> Iterator[None]:
    """The CLI's error boundary: any ivlens error (:class:`ivlens.errors.IvlensError`: task, spec, model load,
    cost estimate, budget, tracing…), a missing file or a bad parameter ends in one red line and exit code 2; the
    traceback only with ``--verbose``."""
    from ivlens.errors import IvlensError

    try:
        yield
    except (IvlensError, FileNotFoundError, typer.BadParameter) as e:
        if _verbose:
            err_console.print_exception()
        hint = getattr(e, "param_hint", None)
        msg = e.format_message() if isinstance(e, typer.BadParameter) else str(e)
        error_line(f"{hint}: {msg}" if isinstance(e, typer.BadParameter) and isinstance(hint, str) else msg)
        raise typer.Exit(2) from None


class RowsRateColumn(ProgressColumn):
    """Rows per second."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:,.0f} rows/s" if task.speed else "… rows/s", style="cyan")


class RowsBar:
    """A row sweep's bar (bar, done/total, rows per second, elapsed time, ETA) as a ``progress(done, total)``
    callback, shown from the first report on (so input refused before any work prints its error line alone)."""

    def __init__(self, console: Console, label: str):
        self.console, self.label, self.bar, self.task_id = console, label, None, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = Progress(TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(),
                                RowsRateColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                console=self.console)
            self.bar.start()
            self.task_id = self.bar.add_task("rows", total=None)
        self.bar.update(self.task_id, completed=done, total=total)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_row_sweep(ctx: typer.Context, spec_cls: type[Spec], options: dict[str, Any], run, label: str, *,
                  resume: Path | None, out: str | None, dry_run: bool, console: Console):
    """The body the row-sweep commands (patch, steer) share: the spec from the options (or ``--resume``),
    ``--dry-run``, the run with its rows bar, and a shard's closing line. Returns ``(spec, result)``; ``result``
    is ``None`` when the command has nothing more to print (a dry run, a shard; ``spec`` too after a dry run)."""
    spec = checked_spec(ctx, spec_cls, options, resume=resume, out=out, dry_run=dry_run)
    if spec is None:
        return None, None
    with friendly_errors():
        if resume is not None:
            console.print(f"resuming {resume}")
        bar = RowsBar(console, label)
        try:
            res = run(spec, out=out, resume=resume, progress=bar)
        finally:
            bar.stop()
    if spec.shard is not None:
        shard_written(res.run.path, spec.shard)
        return spec, None
    return spec, res


def shard_written(path: Path, shard: str) -> None:
    """What a sharded command prints instead of its tables."""
    console.print(f"shard {shard} written: {path} (join the shards with `ivlens merge RUN... --out DIR`)")


def print_dry_run(spec, console=None) -> dict:
    """``--dry-run`` of any analysis's spec, what every command's ``--dry-run`` calls: its cost estimates on the
    models' configs (no weights loaded; :func:`ivlens.analyses.spec_costs`), printed with this device's rates;
    returns the figures of :func:`ivlens.dry_run.print_costs`."""
    from ivlens.analyses import analysis_of, spec_costs
    from ivlens.dry_run import print_costs
    from ivlens.estimate.inputs import model_infos
    from ivlens.organism.dry_run import organism_shape

    if not hasattr(spec, "models"):  # the organism build: built on the CPU in fp32
        costs, _ = spec_costs(spec)
        return print_costs(costs, [organism_shape(spec.size)], "cpu", "float32", console=console)
    infos = model_infos(list(spec.models), spec.gguf_file, spec.revision, spec.trust_remote_code,
                        require_adapter=analysis_of(spec).needs_adapter)
    costs, together = spec_costs(spec, infos)
    return print_costs(costs, [i.shape for i in infos], spec.device, spec.dtype, together=together,
                       console=console, configs=[i.config for i in infos], remote=getattr(spec, "remote", False))
