"""``ivlens run STUDY.yaml``: run a study's steps into one study directory, skip what is done, then report.

The study directory (``--out``, default ``runs/<study name>``) holds one run directory per step
(``<analysis>/<task>-<swept values>``), ``study.json`` (the study and each step's state) and ``report.html``.
Before running, each step's directory is checked (:func:`step_state`):

- no run there: the step runs;
- a finished run of the same spec hash and model labels: skipped;
- an unfinished run of the same spec (a killed study): resumed, keeping its finished units of work;
- a run of other options: refused, naming them (a study directory holds one study's results).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ivlens.analyses import BY_NAME, spec_from_manifest
from ivlens.runs import atomic_write_text, check_out_dir, check_run_format

from .executors import Executor, LocalExecutor, Work
from .plan import Step, plan_steps
from .spec import StudyError, StudySpec

log = logging.getLogger(__name__)

State = Literal["new", "resume", "done"]
STUDY_FILE = "study.json"


def default_directory(study: StudySpec) -> Path:
    return Path("runs") / study.name


def step_state(step: Step, directory: Path) -> State:
    """What to do with ``step`` given what its directory holds (see the module docstring)."""
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        return "new"
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("spec_hash") != step.spec.hash():
        try:
            diffs = "; ".join(spec_from_manifest(manifest).differences(step.spec)) or "another analysis"
        except Exception:  # noqa: BLE001 - a manifest of an older ivlens: say so rather than fail here
            diffs = "a run without a recorded spec"
        raise StudyError(f"{directory} holds a run made with other options ({diffs}): give the study another "
                         "--out, or remove that directory to run the step again")
    finished = manifest.get("status") == "finished"
    if not finished:  # a finished run of an older format is read as this format's; an unfinished one cannot go on
        check_run_format(directory, manifest, "the study's step", "give the study another --out, or remove that "
                         "directory to run the step again")
    names = [str(m.get("name")) for m in manifest.get("models") or []][:len(step.labels)]
    if finished and step.labels and names != list(step.labels):
        raise StudyError(f"{directory} holds a run of models labelled {names}, not {list(step.labels)}: give the "
                         "study another --out, or remove that directory")
    return "done" if finished else "resume"


@dataclass
class StudyResult:
    """What :func:`run_study` did: the study directory, each step's state before the run and its seconds."""

    directory: Path
    states: dict[str, State] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    report: Path | None = None


def _record(directory: Path, study: StudySpec, steps: list[Step], result: StudyResult) -> None:
    doc = {"study": study.model_dump(mode="json"),
           "steps": [{"run": s.rel, "analysis": s.analysis, "spec_hash": s.spec.hash(), "key": s.key(),
                      "depends_on": list(s.depends_on), "state_before": result.states.get(s.rel), "seconds": result.seconds.get(s.rel)}
                     for s in steps]}
    atomic_write_text(directory / STUDY_FILE, json.dumps(doc, indent=2) + "\n")


def check_study_models(study: StudySpec) -> None:
    """Refuse a study whose model files are unusable (config, GGUF magic, safetensors headers; nothing loaded), in
    one :class:`~ivlens.models.files.ModelLoadError` naming the file: before its first step, not after the steps
    before the model's first."""
    from ivlens.models.load import check_model_files

    for entry in study.models.values():
        check_model_files(entry.model, trust_remote_code=study.trust_remote_code)


def sections_ahead(sections: Sequence[Callable], steps: Sequence[Step]) -> list[tuple[Callable, frozenset[str]]]:
    """The report's sections that a study can draw before its last step ends, each with the steps it waits for
    (their ``rel``): a section of an analysis (:attr:`~ivlens.analyses.analysis.Analysis.report`) that reads only
    that analysis's runs (its ``reads``: :func:`ivlens.page.context.runs_section`) waits for that analysis's steps.
    Not the set-up section (it lists every run), nor a section of an analysis with no step in ``steps``."""
    out = []
    for fn in sections:
        for a in BY_NAME.values():
            after = frozenset(s.rel for s in steps if s.analysis == a.name)
            if fn in a.report and getattr(fn, "reads", None) == a.name and after:
                out.append((fn, after))
    return out


def run_study(study: StudySpec, out: str | Path | None = None, *, executor: Executor | None = None,
              report: bool = True, say: Callable[[str], None] | None = None) -> StudyResult:
    """Run every step of ``study`` not already done into the study directory, then write its report.
    ``say(line)`` hears what happens to each step (skipped, started, resumed, finished)."""
    say = say or log.info
    steps = plan_steps(study)
    check_out_dir(out)
    check_study_models(study)
    directory = Path(out) if out is not None else default_directory(study)
    directory.mkdir(parents=True, exist_ok=True)
    directory = directory.resolve()
    result = StudyResult(directory)
    work = []
    for s in steps:
        state = step_state(s, directory / s.rel)
        result.states[s.rel] = state
        if state == "done":
            say(f"{s.rel}: done before (spec {s.spec.hash()[:12]}), skipped")
        else:
            work.append(Work(s, directory / s.rel, resume=state == "resume"))
    _record(directory, study, steps, result)

    def on_start(w: Work) -> None:
        note = BY_NAME[w.step.analysis].start_note
        say(f"{w.step.rel}: {'resuming' if w.resume else 'running'} ivlens {w.step.analysis}"
            + (note(w.step.spec) if note is not None else ""))

    def on_done(w: Work, seconds: float) -> None:
        result.seconds[w.step.rel] = round(seconds, 3)
        say(f"{w.step.rel}: finished in {seconds:.1f} s")
        _record(directory, study, steps, result)

    executor = executor or LocalExecutor()
    if work and hasattr(executor, "describe"):
        say(executor.describe())
    try:
        if report:
            from ivlens.analyses import report_sections
            from ivlens.report import build_report, draw_ahead
        ahead = {}
        if report and hasattr(executor, "map"):
            # an executor with worker processes draws the sections there: a section whose steps are done in a
            # worker that no step can use while the last steps run, the others side by side after them
            early = sections_ahead(report_sections(), steps)
            started = executor.run(work, on_start, on_done, idle=[
                (functools.partial(draw_ahead, str(directory), str(directory), fn), after) for fn, after in early])
            ahead = {early[i][0]: future for i, future in started.items()}
        else:
            executor.run(work, on_start, on_done)
        if report:
            result.report = build_report(directory, sections=report_sections(),
                                         map_sections=getattr(executor, "map", None), ahead=ahead)
    finally:
        if hasattr(executor, "close"):
            executor.close()
    return result
