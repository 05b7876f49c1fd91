"""Options are declared once: every field of an analysis's spec is an option of its command (``--memory-budget`` ↔
``memory_budget``, :func:`ivlens.specs.option_name`) and every option of the command is a spec field, for every
registered analysis; the exceptions are listed here with their reasons."""

from __future__ import annotations

import pytest
import typer

from ivlens.analyses import ANALYSES
from ivlens.cli import app
from ivlens.specs import option_name

#: options of every command that say where and how a run goes, not what it computes (no spec field)
RUN_OPTIONS = {"--out", "--resume", "--dry-run", "--help"}
#: per analysis: (spec fields the command has no option of that name for, options that are no spec field), and why
EXCEPTIONS = {
    # the build's `--no-measure` flag sets measure=False (measuring is on unless turned off)
    "organism": ({"measure"}, {"--no-measure"}),
    # trace has several modes (one prompt, --compare, --readout): every field is an option; no exception
    "trace": (set(), set()),
}


def command(name: str):
    """The click command behind ``ivlens <name>`` (the organism build: ``ivlens organism build``)."""
    group = typer.main.get_command(app)
    cmd = group.commands[name]
    return cmd.commands["build"] if name == "organism" else cmd


@pytest.mark.parametrize("analysis", [a.name for a in ANALYSES])
def test_every_spec_field_is_an_option_and_back(analysis):
    spec = next(a.spec for a in ANALYSES if a.name == analysis)
    options = {o for p in command(analysis).params for o in p.opts if o.startswith("--")} - RUN_OPTIONS
    fields = set(spec.model_fields)
    no_option, no_field = EXCEPTIONS.get(analysis, (set(), set()))
    assert {f for f in fields if option_name(f) not in options} == no_option, "spec fields without an option"
    assert {o for o in options if o not in {option_name(f) for f in fields}} == no_field, "options without a field"
