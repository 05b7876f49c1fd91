"""``ivlens report``: one self-contained HTML page from finished run directories.

The report reads only what runs wrote (``manifest.json``, Parquet tables, JSON) through
:mod:`ivlens.page.reader`; each analysis's section (``ivlens.<analysis>.section``, listed by the registry:
:func:`ivlens.analyses.report_sections`) says what it shows and draws its figures, and :mod:`ivlens.page.html`
writes the page. The page embeds its figures as ``data:`` URIs and makes no network request, so it opens offline
from a ``file://`` URL.

>>> from ivlens.report import build_report
>>> build_report("runs/organism")   # writes report.html in that directory
PosixPath('runs/organism/report.html')
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from ivlens.analyses import report_sections
from ivlens.organism.card import failing_checks
from ivlens.page import html as h
from ivlens.page.context import Context, guard, omitted_as
from ivlens.page.reader import Run, Study, read_study

log = logging.getLogger(__name__)

__all__ = ["REPORT_NAME", "Drawn", "Run", "Study", "build_report", "draw_ahead", "read_study", "render_report"]

REPORT_NAME = "report.html"


def _timed_section(ctx: Context, fn: Callable) -> tuple[h.Section | None, float]:
    t = time.perf_counter()
    sec = guard(fn)(ctx)
    return sec, time.perf_counter() - t


def draw_section(root: str, page_dir: str, fn: Callable) -> tuple[h.Section | None, float]:
    """Section ``fn`` of the study at ``root``, read here (this runs in a worker process), and its seconds."""
    return _timed_section(Context(read_study(root), Path(page_dir)), fn)


@dataclass(frozen=True)
class Drawn:
    """A section drawn ahead of its page (:func:`draw_ahead`), its seconds, and the study's model order it was drawn
    with: the page takes it only where the finished study's order is the same."""

    section: h.Section | None
    seconds: float
    models: tuple[str, ...]


def draw_ahead(root: str, page_dir: str, fn: Callable) -> Drawn:
    """Section ``fn`` of the study at ``root`` as it is now, for a page written later in ``page_dir``: a study
    draws a section in a worker that no step can use while its other steps still run, once the steps whose runs
    the section reads are done (:meth:`ivlens.study.process_executor.ProcessExecutor.run`)."""
    study = read_study(root)
    sec, seconds = _timed_section(Context(study, Path(page_dir)), fn)
    return Drawn(sec, seconds, tuple(study.model_order))


def render_report(study: Study, page_dir: Path, sections: Sequence[Callable] | None = None,
                  map_sections: Callable | None = None, ahead: Mapping[Callable, Future] | None = None) -> str:
    """The page's HTML for ``study``, with links relative to ``page_dir``; ``sections``: the sections to draw, in
    page order (default every registered analysis's, :func:`ivlens.analyses.report_sections`). ``map_sections(fn, sections)``: draws them, in order
    (default the built-in ``map``, here; a study running steps in worker processes draws them there, side by side:
    :meth:`ivlens.study.process_executor.ProcessExecutor.map`), each section a module-level function. ``ahead``:
    sections already being drawn (futures of :func:`draw_ahead`, by section), taken as they are where they were
    drawn with the study's model order, else drawn again here."""
    fns = list(report_sections() if sections is None else sections)
    page_dir = Path(page_dir).resolve()
    ahead = {fn: f for fn, f in (ahead or {}).items() if fn in fns}
    rest = [fn for fn in fns if fn not in ahead]
    if map_sections is None:
        results = dict(zip(rest, map(functools.partial(_timed_section, Context(study, page_dir)), rest), strict=True))
    else:
        results = dict(zip(rest, map_sections(functools.partial(draw_section, str(study.root), str(page_dir)), rest),
                           strict=True))
    for fn, future in ahead.items():
        try:
            early = future.result()
        except Exception as e:  # e.g. a run half-written by a step beside it, or the worker gone: draw it here
            log.info("report section %s: drawing it ahead failed (%s: %s); drawn again", fn.__name__,
                     type(e).__name__, e)
            early = None
        if early is not None and early.models == tuple(study.model_order):
            results[fn] = early.section, early.seconds
        else:  # failed, or a run that started after it was drawn changed the models' order: draw it again
            results[fn] = _timed_section(Context(study, page_dir), fn)
    drawn, omitted = [], []
    for fn in fns:
        sec, seconds = results[fn]
        log.info("report section %s: %.1f s%s", fn.__name__, seconds, " (drawn ahead)" if fn in ahead else "")
        if sec is None:
            omitted.append(omitted_as(fn))
        else:
            drawn.append(sec)
    commands = sorted({r.command for r in study.runs})
    subtitle = [
        h.esc(f"ivlens report of {study.root.name}: {', '.join(commands)} on "
              f"{', '.join(study.model_order) or 'no model'}; built {_dt.datetime.now():%Y-%m-%d %H:%M}."),
        "Instruction vectors, layer patching, probes and exact path tracing, after "
        f'<a href="{h.PAPER_URL}">Bigoulaeva et al., <i>Patches of Nonlinearity: Instruction Vectors in LLMs</i> '
        "(arXiv 2602.07930)</a>.",
    ]
    failing = [f"{run.rel}: {line}" for run in study.of("organism") for line in failing_checks(run.json("card") or {})]
    if failing:
        subtitle.insert(0, '<strong class="warn">Warning: the model organism fails '
                        f'{len(failing)} of its acceptance checks</strong>, so it may not show what it was built to '
                        "show (see The model organisms):<br>" + "<br>".join(h.esc(line) for line in failing))
    if omitted:
        subtitle.append(h.inline("Not in this run directory, so omitted: " + "; ".join(
            f"{what} (no finished `{cmd}` run)" for what, cmd in omitted) + "."))
    return h.page(f"ivlens report: {study.root.name}", subtitle, drawn)


def build_report(run_dir: str | Path, out: str | Path | None = None,
                 sections: Sequence[Callable] | None = None, map_sections: Callable | None = None,
                 ahead: Mapping[Callable, Future] | None = None) -> Path:
    """Write the report of ``run_dir`` (a study directory or a single run) to ``out`` (default
    ``<run_dir>/report.html``) and return its path.

    Args:
        run_dir: a run directory (holding ``manifest.json``) or a directory of run directories.
        out: the HTML file to write; links to the Parquet tables are relative to its folder.
        sections: the sections to draw (:func:`render_report`; default every registered analysis's,
            :func:`ivlens.analyses.report_sections`).
        map_sections: how the sections are drawn (:func:`render_report`).
        ahead: sections a study drew while its last steps ran (:func:`render_report`).
    """
    from ivlens.runs import atomic_write_text, check_out_file

    check_out_file(out)
    t0 = time.perf_counter()
    study = read_study(run_dir)
    path = Path(out) if out is not None else study.root / REPORT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, render_report(study, path.parent, sections, map_sections, ahead))
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)  # a page to share: readable like any file the user writes (mkstemp made it 0600)
    log.info("report written to %s in %.1f s", path, time.perf_counter() - t0)
    return path
