"""Options are declared once: every field of an analysis's spec is an option of its command (``--memory-budget`` ↔
``memory_budget``, :func:`ivlens.specs.option_name`) and every option of the command is a spec field, for every
registered analysis, with the field's help; the options that are no field are listed here with their purpose."""

from __future__ import annotations

import pytest
import typer

from ivlens.analyses import ANALYSES
from ivlens.cli import app
from ivlens.specs import field_cli, option_name

#: the only options that are no spec field, each with its purpose: what a command does with a run, not what the run
#: computes (every other option of an analysis's command is one of its spec's fields)
COMMAND_ONLY = {"--out": "the run directory to write", "--resume": "the run directory to continue",
                "--dry-run": "print the cost estimate instead of running", "--help": "the command's help"}


def command(name: str):
    """The click command behind ``ivlens <name>`` (the organism build: ``ivlens organism build``)."""
    group = typer.main.get_command(app)
    cmd = group.commands[name]
    return cmd.commands["build"] if name == "organism" else cmd


@pytest.mark.parametrize("analysis", [a.name for a in ANALYSES])
def test_every_spec_field_is_an_option_and_back(analysis):
    """Each field is a parameter named like it, whose option is :func:`option_name` (or its ``Cli.flag``) and whose
    help is the field's description; each option is a field or command-only."""
    spec = next(a.spec for a in ANALYSES if a.name == analysis)
    params = {p.name: p for p in command(analysis).params}
    for name, field in spec.model_fields.items():
        assert name in params, f"{spec.__name__}.{name} has no option"
        assert (field_cli(field).flag or option_name(name)) in params[name].opts
        assert params[name].help == field.description, name
        assert field_cli(field).short is None or field_cli(field).short in params[name].opts
    no_field = {o for n, p in params.items() if n not in spec.model_fields for o in p.opts if o.startswith("--")}
    assert no_field <= set(COMMAND_ONLY), f"options without a field or a declared purpose: {no_field - set(COMMAND_ONLY)}"
    assert {"--out", "--dry-run"} <= no_field


#: options that mean the same in every command that has them: one shared field, one help
SAME_EVERYWHERE = ("--model", "--dtype", "--device", "--format", "--split", "--revision", "--gguf-file", "--shard")


def test_an_option_shared_by_commands_has_one_help():
    """One wording per option across the commands (``patch`` and ``steer`` had their own for ``--model``,
    ``--dtype``, ``--device``, ``--seed``, ``--memory-budget``, ``--format`` and ``--split``); where the meaning
    differs (``--seed`` of the CV folds in ``probe``, the tracer's own memory default), one wording per meaning:
    the sample draw's seed and the batching memory budget read the same in every command that has them."""
    helps: dict[str, dict[str, list[str]]] = {}
    for a in ANALYSES:
        for p in command(a.name).params:
            if p.opts[0].startswith("--") and p.opts[0] not in COMMAND_ONLY:
                helps.setdefault(p.opts[0], {}).setdefault(p.help, []).append(a.name)
    for name in SAME_EVERYWHERE:
        assert len(helps[name]) == 1, f"{name} is worded differently by different commands: {helps[name]}"
    for name in ("--model", "--dtype", "--device", "--format"):
        assert {"eval", "patch", "steer", "probe", "trace"} <= set(next(iter(helps[name].values()))), name
    seeds = {h: cmds for h, cmds in helps["--seed"].items() if "sample draw" in h}
    assert len(seeds) == 1 and {"eval", "patch", "steer", "trace"} <= set(next(iter(seeds.values())))
    budgets = {h: cmds for h, cmds in helps["--memory-budget"].items() if "batch sizes follow" in h}
    assert len(budgets) == 1 and {"patch", "steer", "probe"} <= set(next(iter(budgets.values())))


def test_spec_command_converts_the_options_to_field_values():
    """:func:`spec_command` on a demo spec: comma-separated and repeated tuples, a parsed option (its error is one
    line, exit 2), a flag that turns a True default off, a bound the parser checks, the order of the options (the
    models, the spec's own fields, the inherited ones, then the body's own), and the body's own options apart."""
    from typing import Annotated

    from pydantic import Field
    from typer.testing import CliRunner

    from ivlens.cli.generated import spec_command
    from ivlens.specs import Cli, ModelsSpec, SpecError

    def numbers(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in text.split(","))
        except ValueError:
            raise SpecError(f"--figure-layers: {text!r} is not a layer number") from None

    class DemoSpec(ModelsSpec):
        analysis = "demo"
        tasks: Annotated[tuple[str, ...], Cli(short="-t")] = Field(("a", "b"), description="comma-separated tasks")
        figure_layers: Annotated[tuple[int, ...] | None, Cli(parse=numbers)] = Field(None, description="layers")
        measure: Annotated[bool, Cli(flag="--no-measure")] = Field(True, description="skip measuring")
        top_k: Annotated[int, Cli(min=1)] = Field(3, description="how many")

    seen = {}

    @spec_command(DemoSpec)
    def demo(ctx: typer.Context, options: dict, *, out: str | None = None) -> None:
        """A demo."""
        seen.update(options, out=out)

    cli = typer.Typer()
    cli.command("demo")(demo)
    cli.command("other")(lambda: None)
    names = [p.name for p in typer.main.get_command(cli).commands["demo"].params]
    assert names[:5] == ["models", "tasks", "figure_layers", "measure", "top_k"] and names[-1] == "out"
    r = CliRunner().invoke(cli, ["demo", "-m", "x", "-m", "y", "-t", "p, q,", "--figure-layers", "0,-1",
                                 "--no-measure", "--out", "o"])
    assert r.exit_code == 0, r.output
    assert seen["models"] == ("x", "y") and seen["tasks"] == ("p", "q") and seen["figure_layers"] == (0, -1)
    assert seen["measure"] is False and seen["top_k"] == 3 and seen["out"] == "o"
    assert DemoSpec(**{k: v for k, v in seen.items() if k != "out"}).measure is False
    r = CliRunner().invoke(cli, ["demo", "-m", "x, y", "-m", "z"])  # --model also takes a comma-separated list
    assert r.exit_code == 0 and seen["models"] == ("x", "y", "z"), r.output
    r = CliRunner().invoke(cli, ["demo", "-m", "x"])
    assert seen["measure"] is True and seen["tasks"] == ("a", "b") and seen["figure_layers"] is None
    r = CliRunner().invoke(cli, ["demo", "-m", "x", "--figure-layers", "0,one"])
    assert r.exit_code == 2 and "--figure-layers: '0,one' is not a layer number" in r.output
    r = CliRunner().invoke(cli, ["demo", "-m", "x", "--top-k", "0"])
    assert r.exit_code == 2 and "--top-k" in r.output

    with pytest.raises(TypeError, match="fields of DemoSpec"):
        spec_command(DemoSpec)(lambda ctx, options, *, tasks=None: None)


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


@pytest.mark.parametrize("args, line", [
    (["probe", "-m", "x", "--figure-layers", "1,x"], "error: --figure-layers: 'x' is not a layer number"),
    (["probe", "-m", "x", "--instructions", "bad"], "error: --instructions 'bad': expected NAME=PATH"),
    (["patch", "-m", "x", "--screen", "0"], "Invalid value for '--screen'"),
    (["organism", "build", "--threads", "0"], "Invalid value for '--threads'"),
    (["organism", "build", "--measure"], "No such option: --measure"),
    (["steer", "-m", "x", "--remote"], "No such option: --remote"),
])
def test_generated_options_refuse_bad_input_in_one_line(args, line, capsys, monkeypatch):
    """The real commands' parsed, bounded and absent options: one line, exit 2, before any model is loaded."""
    from ivlens.cli import main

    monkeypatch.setattr("sys.argv", ["ivlens", *args])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and line in " ".join(err.split()) and len(err.strip().splitlines()) == 1, err
