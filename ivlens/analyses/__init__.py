"""The analyses ivlens runs, declared once: the registry that the CLI, studies, dry runs, ``ivlens merge`` and the
tests read instead of naming analyses.

Each :class:`Analysis` says what its runs need and where its pieces are: the spec (options, validation, hash), the
run (``run(spec, *, models, out, resume, root)``), the dry-run cost estimate (``cost(spec, infos) ->
[CostEstimate]``), the report sections that draw its finished runs, whether it needs an architecture adapter,
whether a study runs it once per task, which analyses' runs it may read, whether its models are loaded together, and
its place in a study's order. Whether a run shards is its spec's :attr:`~ivlens.specs.Spec.shardable`.

Adding an analysis: its package ``ivlens/analyses/<name>/`` (spec, maths, run, dry-run cost estimate, report section
and its :class:`Analysis` entry) and one line in :data:`ANALYSES` (``docs/contributing.md``). The CLI command is
generated from the spec (:mod:`ivlens.cli.generated`), the report takes its sections from :func:`report_sections`,
and the registry-driven tests run its ``example``.

>>> [a.name for a in ANALYSES][:3]
['organism', 'eval', 'patch']
>>> analysis_of(EvalSpec(models=("m",), task="adjectives")).per_task
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ivlens import api
from ivlens.eval.dry_run import eval_spec_costs
from ivlens.eval.section import eval_section
from ivlens.eval.spec import EvalSpec
from ivlens.organism.dry_run import organism_spec_costs
from ivlens.organism.section import organism_section
from ivlens.organism.spec import OrganismSpec
from ivlens.page.setup import setup_section
from ivlens.patching.dry_run import patch_spec_costs
from ivlens.patching.section import patching_section
from ivlens.patching.spec import PatchSpec
from ivlens.probing.dry_run import probe_spec_costs
from ivlens.probing.section import probing_section
from ivlens.probing.spec import ProbeSpec
from ivlens.runs import RunDir
from ivlens.specs import Spec, SpecError
from ivlens.steering.dry_run import steer_costs
from ivlens.steering.section import steering_section
from ivlens.steering.spec import SteerSpec
from ivlens.steering.study_link import link_steer
from ivlens.tracing.dry_run import trace_spec_costs
from ivlens.tracing.section import iv_construction_section, tracing_section
from ivlens.tracing.spec import TraceSpec
from ivlens.tracing.study_link import link_trace

from . import logit_lens
from .analysis import Analysis


@dataclass(frozen=True)
class OrganismStepResult:
    """What the organism step produced: its run directory (the card and its IV-transfer table) and the build's
    directory (in the cache, or ``spec``'s ``out``)."""

    run: RunDir
    build: Path


def organism_step_reuses(spec: OrganismSpec, *, refuse: bool = False) -> bool | None:
    """Whether a study's organism step reuses the build in the cache (the step builds into the default directory):
    ``True`` when it is the build asked for, ``False`` when there is none or ``spec.force``, ``None`` when another
    build is there, which the step refuses (:class:`ivlens.organism.build.OrganismMismatchError`; raised here too
    with ``refuse``)."""
    from ivlens.organism.build import OrganismMismatchError, reusable
    from ivlens.organism.paths import organism_dir

    if spec.force:
        return False
    try:
        return reusable(organism_dir(spec.variant), seed=spec.seed, size=spec.size, threads=spec.threads,
                        measure=spec.measure)
    except OrganismMismatchError:
        if refuse:
            raise
        return None


def organism_build_note(spec: OrganismSpec) -> str:
    """What an organism step is about to cost: nothing when the build asked for is there (:func:`organism_step_reuses`),
    else the dry run's estimate of the build on this machine (``ivlens organism build --dry-run``), so a slow machine
    says so before it starts; no note where another build is there (the step refuses it in its first line)."""
    from ivlens.dry_run import human_time, organism_build_seconds

    reuse = organism_step_reuses(spec)
    if reuse is None:  # another build is there: the step refuses it in its first line (OrganismMismatchError)
        return ""
    if reuse:
        return " (the organisms are built: reusing them)"
    estimate = organism_build_seconds(spec.size, spec.variant, spec.measure, spec.threads)
    return (f" (building the organisms: about {human_time(estimate)} here, the dry run's estimate for this machine "
            "as loaded now)")


def _run_organism(spec: OrganismSpec, *, models=None, out=None, resume=None, root=None) -> OrganismStepResult:
    """The organism build as a step: its run directory holds the card (the build itself goes to the cache)."""
    directory = out if out is not None else resume
    build = api.run_organism(spec, run_dir=directory, progress=False)
    return OrganismStepResult(RunDir.open(directory), Path(build))


#: Every analysis, in a study's run order. A new analysis is one more entry here.
ANALYSES: tuple[Analysis, ...] = (
    Analysis("organism", OrganismSpec, _run_organism, organism_spec_costs, (organism_section,),
             per_task=False, together=False, order=0, provides_models=True, start_note=organism_build_note),
    Analysis("eval", EvalSpec, api.run_eval, eval_spec_costs, (eval_section,), order=10),
    Analysis("patch", PatchSpec, api.run_patch, patch_spec_costs, (patching_section,),
             needs_adapter=True, order=20),
    Analysis("probe", ProbeSpec, api.run_probe, probe_spec_costs, (probing_section,),
             per_task=False, together=False, order=30),
    logit_lens.ANALYSIS,
    Analysis("steer", SteerSpec, api.run_steer, steer_costs, (steering_section,),
             needs_adapter=True, depends_on=("patch", "probe"), order=40, takes_root=True, link=link_steer),
    Analysis("trace", TraceSpec, api.run_trace, trace_spec_costs,
             (tracing_section, iv_construction_section), needs_adapter=True,
             depends_on=("probe",), order=50, takes_root=True, link=link_trace),
)

BY_NAME: dict[str, Analysis] = {a.name: a for a in sorted(ANALYSES, key=lambda a: a.order)}
#: the spec class of each analysis, by name
SPECS: dict[str, type[Spec]] = {a.name: a.spec for a in ANALYSES}


def report_sections() -> tuple[Callable, ...]:
    """The report's sections in page order: the set-up, then each analysis's sections in registry order (what
    ``ivlens report`` and a study's report draw; :func:`ivlens.report.build_report`)."""
    return (setup_section, *[s for a in sorted(ANALYSES, key=lambda a: a.order) for s in a.report])


def analysis_of(spec: Spec) -> Analysis:
    """The registered analysis of ``spec`` (by its class)."""
    for a in ANALYSES:
        if type(spec) is a.spec:
            return a
    raise SpecError(f"{type(spec).__name__} is no registered analysis's spec ({', '.join(BY_NAME)})")


def spec_from_manifest(manifest: dict) -> Spec:
    """The spec a run directory's manifest records (``command`` picks the class)."""
    cls = SPECS.get(manifest.get("command", ""))
    if cls is None or "spec" not in manifest:
        raise SpecError(f"this run directory records no {', '.join(SPECS)} spec (made by an older ivlens?): "
                        "start a new run instead of --resume")
    return cls(**manifest["spec"])


def stored_spec(run_dir: str | Path) -> Spec:
    """The spec recorded in an earlier run's manifest (for ``--resume``: a run of an older format is refused here,
    before any model loads)."""
    return spec_from_manifest(RunDir.resume(run_dir).manifest)


def spec_costs(spec: Spec, infos: Sequence = ()) -> tuple[list, bool]:
    """The dry-run cost estimates of any analysis's spec on the models described by ``infos``, and whether the
    analysis holds its models together."""
    a = analysis_of(spec)
    return a.cost(spec, infos), a.together


def run_spec(spec: Spec, *, models=None, out: str | Path | None = None, resume: str | Path | None = None,
             root: str | Path | None = None) -> Path:
    """Run any analysis's spec into ``out`` (or finish the run at ``resume``) through its registered run; returns the
    run directory. The study runner and ``ivlens merge`` call this; ``root``: the study directory, against which
    the relative run directories a run reads (a trace read-out, a steer step's patch run) are read."""
    a = analysis_of(spec)
    extra = {"root": root} if a.takes_root and root is not None else {}
    return a.run(spec, models=models, out=out, resume=resume, **extra).run.path
