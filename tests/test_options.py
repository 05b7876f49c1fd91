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


def test_a_generated_command_has_one_option_per_field_with_its_help():
    """ivlens.cli.generated: an analysis without a hand-written command gets one from its spec's fields (their
    descriptions are the options' help); a field without a description is refused when the CLI is built."""
    from typing import Literal

    from pydantic import Field

    from ivlens.analyses import Analysis
    from ivlens.cli.generated import analysis_command
    from ivlens.specs import ModelsSpec

    class DemoSpec(ModelsSpec):
        analysis = "demo"
        task: str = Field(description="the task")
        tasks: tuple[str, ...] = Field(default=("a", "b"), description="comma-separated tasks")
        top_k: int | None = Field(default=None, description="how many")
        level: float = Field(default=0.9, description="the level")
        mode: Literal["x", "y"] = Field(default="x", description="the mode")
        figures: bool = Field(default=True, description="draw figures")

    demo = typer.Typer()
    demo.command("demo")(analysis_command(Analysis("demo", DemoSpec, lambda *a, **k: None, lambda *a: [])))
    demo.command("other")(lambda: None)
    params = {o: p for p in typer.main.get_command(demo).commands["demo"].params for o in p.opts}
    assert {option_name(f) for f in DemoSpec.model_fields} <= set(params)
    assert params["--tasks"].help == "comma-separated tasks" and params["--tasks"].default == "a,b"
    assert params["--mode"].help == "the mode" and "--no-figures" in params["--figures"].secondary_opts

    class Undocumented(ModelsSpec):
        analysis = "undocumented"
        task: str = "adjectives"

    with pytest.raises(TypeError, match="Undocumented.task has no description"):
        analysis_command(Analysis("undocumented", Undocumented, lambda *a, **k: None, lambda *a: []))
