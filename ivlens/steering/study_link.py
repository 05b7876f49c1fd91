"""How a steer step of a study reads the study's other steps (the registry's ``link``,
:class:`ivlens.analyses.analysis.Analysis`): a steer step is compared with the study's transfer patch step of the
same setting."""

from __future__ import annotations

from collections.abc import Sequence

from ivlens.specs import StepRef

from .spec import SteerSpec


def comparison_setting(spec) -> tuple:
    """What a steering run and a patch run must share to be compared: task, subtask (default: the task's first),
    target and format."""
    from ivlens.tasks import load_task

    return spec.task, spec.subtask or load_task(spec.task).subtask_names[0], spec.target, spec.format


def link_steer(spec: SteerSpec, others: Sequence[StepRef]) -> tuple[SteerSpec, tuple[str, ...]]:
    """``spec`` with its ``patch_run`` set to the study's transfer patch step of the same setting, where the block
    names none and there is one; and the patch step it then reads (``()`` where its ``patch_run`` is no step of
    the study: a finished run elsewhere, or none)."""
    patches = [o for o in others if o.analysis == "patch"]
    if spec.patch_run is None:
        mine = comparison_setting(spec)
        match = next((p for p in patches if p.spec.mode == "transfer" and comparison_setting(p.spec) == mine), None)
        if match is not None:
            spec = spec.model_copy(update={"patch_run": match.rel})
    return spec, ((spec.patch_run,) if spec.patch_run in {p.rel for p in patches} else ())
