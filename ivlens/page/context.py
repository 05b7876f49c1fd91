"""What a report section is given (:class:`Context`: the finished runs and where the page goes), how it is
drawn from the runs it shows (:func:`runs_section`) and safely (:func:`guard`), and what the page lists when a
section has nothing to draw (:func:`omitted_as`)."""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import html as h
from .reader import Run, Study

log = logging.getLogger(__name__)


@dataclass
class Context:
    """The study and where the page is written (links to tables are relative to it)."""

    study: Study
    page_dir: Path

    @property
    def models(self) -> list[str]:
        return self.study.model_order

    def section_runs(self, kind: str, having: str | Callable[[Run], bool]) -> list[Run]:
        """The study's finished runs of ``kind`` (the command that made them) that a section draws: those that
        wrote the table ``having`` or, given a test, pass it; in the study's order."""
        drawn = having if callable(having) else lambda run: run.has(having)
        return [r for r in self.study.of(kind) if drawn(r)]

    def href(self, run: Run, name: str) -> str:
        """Relative link from the page to ``run``'s table ``name`` (or any file name with a suffix)."""
        p = run.path / name if "." in name else (run.table_path(name) or run.path / f"{name}.parquet")
        return os.path.relpath(p, self.page_dir).replace(os.sep, "/")

    def data(self, run: Run, *names: str) -> list[tuple[str, str]]:
        """``[(label, href)]`` for the tables ``names`` of ``run`` (label: run folder / file)."""
        out = []
        for n in names:
            href = self.href(run, n)
            label = f"{run.rel}/{Path(href).name}" if run.rel != "." else Path(href).name
            out.append((label, href))
        return out


def n_layers_of(run: Run, *tables: pd.DataFrame) -> int:
    sizes = [int(m["n_layers"]) for m in run.models if m.get("n_layers")]
    if sizes:
        return max(sizes)
    best = 0
    for t in tables:
        if "layer" in t:
            best = max(best, int(t.layer.max()) + 1)
        if "layers" in t:
            best = max(best, 1 + max(int(x) for s in t.layers for x in str(s).split(",")))
    return best


def guard(fn):
    """A section that fails to draw becomes a note naming the error, so one bad table never loses the page
    (idempotent: a guarded section is returned as it is)."""
    if getattr(fn, "guarded", False):
        return fn

    def wrapped(ctx: Context) -> h.Section | None:
        try:
            return fn(ctx)
        except Exception as e:  # noqa: BLE001 - the page must still be written; the error is shown in it
            log.exception("report section %s failed", fn.__name__)
            title = fn.__doc__.strip().splitlines()[0].rstrip(".") if fn.__doc__ else fn.__name__
            return h.Section(fn.__name__.removesuffix("_section"), title).add(
                h.caveat(f"This section could not be drawn: {type(e).__name__}: {e}"))

    functools.update_wrapper(wrapped, fn)  # the module's name for it: a guarded section pickles by reference
    wrapped.guarded = True
    return wrapped


def runs_section(kind: str, having: str | Callable[[Run], bool], *, id: str, title: str) -> Callable:
    """Decorator: a report section drawn from the runs ``ctx.section_runs(kind, having)``.

    The decorated ``fn(ctx, runs, s) -> Section`` fills ``s``, the section opened with the anchor ``id``, the
    ``title`` and, where ``fn``'s docstring has more than its first line, that text as its opening paragraph
    (:func:`docstring_body`: the page's prose about a section is written once, in its docstring); the section
    is left out (``None``) where no run is drawn, and is :func:`guard`-ed. It keeps ``fn``'s name and
    docstring, and records ``kind`` as its ``reads``: the only runs it reads, so a study can draw it as soon as its
    steps of that analysis are done (:func:`ivlens.study.runner.sections_ahead`)."""

    def wrap(fn: Callable[[Context, list[Run], h.Section], h.Section]) -> Callable[[Context], h.Section | None]:
        intro = docstring_body(fn)

        def section(ctx: Context) -> h.Section | None:
            runs = ctx.section_runs(kind, having)
            if not runs:
                return None
            return fn(ctx, runs, h.Section(id, title).add(h.para(intro) if intro else ""))

        functools.update_wrapper(section, fn)
        section.reads = kind
        return guard(section)

    return wrap


def docstring_body(fn) -> str:
    """The text of ``fn``'s docstring after its first line, as one paragraph (its lines joined by spaces)."""
    lines = inspect.cleandoc(fn.__doc__ or "").splitlines()[1:]
    return " ".join(line for line in lines if line)


def omitted_as(fn) -> tuple[str, str]:
    """What an omitted section would have shown and the analysis that writes it: the section's own ``omitted``
    attribute where it sets one, else its docstring's first line and its name less ``_section``."""
    if getattr(fn, "omitted", None):
        return fn.omitted
    doc = (fn.__doc__ or "").strip().splitlines()
    what = doc[0].rstrip(".") if doc else fn.__name__
    return what[:1].lower() + what[1:], fn.__name__.removesuffix("_section").replace("_", "-")

