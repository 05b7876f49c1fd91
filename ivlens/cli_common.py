"""Options and helpers shared by the CLI commands: model loading options, console, progress, errors."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Literal

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

console = Console(stderr=False)
err_console = Console(stderr=True)

ModelOpt = Annotated[list[str], typer.Option("--model", "-m", help="Hub id, local directory, .gguf file, "
                                             "organism-base|sft|dpo or smollm2-135m-instruct; repeat for several")]
GgufOpt = Annotated[str | None, typer.Option("--gguf-file", help="GGUF file inside the model repo/directory, or its path")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32 | bfloat16 | float16")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu | cuda | cuda:N | auto (accelerate device_map)")]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="hub revision (branch, tag or commit)")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="allow custom model code from the repo")]
TaskOpt = Annotated[str, typer.Option("--task", "-t", help="built-in task name or path of a YAML task spec")]
OutOpt = Annotated[str | None, typer.Option("--out", help="run directory (default runs/<date>-<command>-<name>)")]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed of the sample selection")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="print the plan (forward passes, FLOPs, peak memory, "
                                         "time on --device) from the models' configs, without loading weights, "
                                         "and exit")]
MemoryBudgetOpt = Annotated[str | None, typer.Option("--memory-budget", help="working memory beyond the weights "
                                                     "(4GB, 512MiB, 1.5G; default: a safe share of free memory)")]
ScoreOpt = Annotated[Literal["first-token", "answer"], typer.Option("--score",
                                       help="first-token: the label's first token (the paper's); answer: whole labels "
                                       "by teacher-forced log-probability, ranked among the label space (use when "
                                       "labels share their first token, e.g. numbers)")]
FormatOpt = Annotated[str, typer.Option("--format", help="prompt format: raw (the paper's) | chat")]


@contextmanager
def cli_logging(verbose: bool = False) -> Iterator[None]:
    """Logging for one CLI invocation: ivlens's records through rich on stderr (INFO with ``--verbose``,
    else WARNING), third-party progress bars and chatter off unless ``--verbose``
    (:func:`ivlens.scoped.quiet_libraries`). The root logger is restored afterwards, so invoking the CLI
    in-process (tests, notebooks) leaves logging as it was."""
    from ivlens.scoped import quiet_libraries

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    root.handlers = [RichHandler(console=err_console, show_path=False, show_time=False)]
    root.handlers[0].setFormatter(logging.Formatter("%(message)s"))
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        with quiet_libraries(verbose):
            yield
    finally:
        root.handlers, root.level = handlers, level


def load_models(names: list[str], gguf_file: str | None, dtype: str, device: str, revision: str | None,
                trust_remote_code: bool):
    """Load every ``--model``; errors become a clean exit with the message."""
    from ivlens.models.load import load_model

    out = []
    for name in names:
        with console.status(f"loading {name}"):
            out.append(load_model(name, gguf_file=gguf_file, dtype=dtype, device=device, revision=revision,
                                  trust_remote_code=trust_remote_code))
    return out


def import_callable(spec: str):
    """``package.module:function`` → the function (for user hooks such as ``--judge``)."""
    if ":" not in spec:
        raise typer.BadParameter(f"{spec!r}: expected 'module:function'")
    mod, fn = spec.split(":", 1)
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise typer.BadParameter(f"cannot import {spec!r}: {e}") from None


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


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Turn ivlens's own input errors into a one-line message and exit code 2 (never a deep traceback)."""
    from ivlens.models.adapters import UnsupportedArchitectureError
    from ivlens.models.load import ModelLoadError
    from ivlens.tasks.schema import TaskError

    try:
        yield
    except (TaskError, ModelLoadError, UnsupportedArchitectureError, FileNotFoundError) as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}")  # user text is never rich markup
        raise typer.Exit(2) from None
