"""What the registry records of one analysis (:class:`Analysis`), apart from the registry itself so that an analysis
package can declare its own entry (``ivlens/analyses/<name>/``) and the registry lists it in one line."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ivlens.specs import Spec, StepRef


@dataclass(frozen=True)
class Analysis:
    """One analysis, as every caller sees it.

    Args:
        name: the command (``ivlens <name>``), a study's ``analyses`` key and a run's ``command``.
        spec: its :class:`~ivlens.specs.Spec` class (``spec.analysis == name``).
        run: ``run(spec, *, models=None, out=None, resume=None, root=None)``: computes one run directory; returns
            its result, whose ``run`` attribute is the :class:`~ivlens.runs.RunDir` (every analysis's result has
            one, so callers need not know which analysis ran).
        cost: ``cost(spec, infos) -> [CostEstimate]``: the dry run on the models' configs (``infos`` in
            ``spec.models`` order; none for the organism build).
        report: the report sections (``section(ctx) -> Section | None``) that draw its finished runs, in page order.
        needs_adapter: its models need an architecture adapter (patching, steering and tracing edit internals).
        per_task: a study runs it once per task (else once, on all the study's tasks).
        depends_on: analyses whose runs its runs may read (a study runs those first and waits for them).
        together: it holds all its models in memory at once (the dry run's peak adds their weights).
        order: its place in a study's run order (lower first) and on the report's page.
        takes_root: its run reads other run directories given relative to a study directory (``root``).
        example: the spec options (models aside) of a small run on tiny models, which the registry-driven tests
            run (same seed, same bytes; shards merged equal the whole run when the spec shards); empty for an
            analysis those tests cover by hand (their own lists).
        provides_models: its runs make the models that the other steps of a study load (the organism build): in a
            study it takes no models, its tasks need not be the study's, and every other step waits for it.
        link: in a study, ``link(spec, others) -> (spec, reads)``: completes the step's spec from the study's steps
            of the analyses in ``depends_on`` (``others``: :class:`~ivlens.specs.StepRef`, in run order) and names
            the run directories (study-relative) that the step reads, which the study runs first; raises
            :class:`~ivlens.specs.SpecError` for a spec that reads a run the study does not make. ``None``: the
            step reads no other step.
        start_note: in a study, ``start_note(spec) -> str``: what is appended to the line that says the step starts
            (the organism build: its estimated time on this machine, or that the organisms are reused).
    """

    name: str
    spec: type[Spec]
    run: Callable[..., Any]
    cost: Callable[[Spec, Sequence], list]
    report: tuple[Callable, ...] = ()
    needs_adapter: bool = False
    per_task: bool = True
    depends_on: tuple[str, ...] = ()
    together: bool = True
    order: int = 0
    takes_root: bool = False
    example: dict[str, Any] = field(default_factory=dict)
    provides_models: bool = False
    link: Callable[[Spec, Sequence[StepRef]], tuple[Spec, tuple[str, ...]]] | None = None
    start_note: Callable[[Spec], str] | None = None
