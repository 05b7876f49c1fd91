"""Commands generated from a spec: every option of an analysis's command is one of its spec's fields, declared once
there (type, default, ``description`` = the option's help, :class:`ivlens.specs.Cli` for a short flag, a repeated
or parsed value, a bound the parser checks).

- :func:`spec_command` makes a typer command from a spec and a hand-written body that keeps only what is truly the
  command's own: its run options (``--out``, ``--resume``, ``--dry-run``, each with its help) and what it prints.
- :func:`analysis_command` is the whole command of an analysis registered in :data:`ivlens.analyses.ANALYSES`
  without a hand-written one, so that a new analysis adds no CLI code.

Each field becomes the option :func:`ivlens.specs.option_name` names (``memory_budget`` → ``--memory-budget``) with
the field's ``description`` as its help (a field without one is a programming error, raised when the CLI is built;
an option shared by several commands is one shared field, so it reads the same everywhere). Types: ``str``, ``int``,
``float``, ``bool`` (``--x``; ``--x/--no-x`` when the default is True), ``Literal`` choices, their optional forms,
``tuple[str, ...]`` given comma-separated (``--tasks adjectives,animals``) or repeated (``Cli(repeat=True)``), and
any type with a ``Cli(parse=...)`` from the option's text.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console

from ivlens.analyses import BY_NAME, Analysis, run_spec
from ivlens.cli.common import (
    DryRunOpt,
    OutOpt,
    ResumeOpt,
    checked_spec,
    console,
    friendly_errors,
    run_row_sweep,
    shard_written,
)
from ivlens.runs import RunDir
from ivlens.specs import Spec, field_cli, option_name

#: how the option's text becomes the field's value: comma-separated, repeated, parsed, negated flag, or as typed
Convert = Callable[[Any], Any]
#: the run options most commands share (annotation, default); a body names one without an annotation to take it
RUN_OPTIONS = {"out": (OutOpt, None), "resume": (ResumeOpt, None), "dry_run": (DryRunOpt, False)}


def _option_type(name: str, annotation: Any) -> tuple[Any, bool]:
    """The typer type of a field's annotation and whether it is a comma-separated tuple."""
    args = typing.get_args(annotation)
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args
    inner = next(a for a in args if a is not type(None)) if optional else annotation
    if typing.get_origin(inner) is tuple:
        return (str | None) if optional else str, True
    if inner in (str, int, float, bool) or typing.get_origin(inner) is Literal:
        return (inner | None) if optional else inner, False
    raise TypeError(f"spec field {name!r}: {annotation!r} has no generated option (str, int, float, bool, Literal, "
                    "their optional forms, tuple[str, ...], or a Cli(parse=...)); write the command by hand")


def _comma_split(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(x.strip() for x in text.split(",") if x.strip())


def _field_option(spec_cls: type[Spec], name: str, field: Any) -> tuple[inspect.Parameter, Convert | None]:
    """One spec field as a typer parameter (named like the field) and how its value becomes the field's."""
    cli = field_cli(field)
    help_text = field.description
    if not help_text:
        raise TypeError(f"{spec_cls.__name__}.{name} has no description: give it Field(description=...) "
                        "(the help of its option)")
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    convert: Convert | None = None
    decl = [option_name(name)]
    if cli.repeat:
        kind = list[str] | None
        default = list(default) if default else None
        convert = (lambda v, p=cli.parse: p(list(v or ()))) if cli.parse else (lambda v: tuple(v or ()))
    elif cli.parse is not None:
        kind = str | None
        default = ",".join(map(str, default)) if isinstance(default, tuple) else default
        convert = lambda v, p=cli.parse: p(v) if v else None  # noqa: E731
    else:
        kind, comma = _option_type(name, field.annotation)
        if comma:
            default, convert = (",".join(default) if default else None), _comma_split
        elif kind is bool and cli.flag:  # the only flag sets the field to the opposite of its default
            decl, convert = [cli.flag], (lambda v, d=default: (not d) if v else d)
            default = False
        elif kind is bool and default:
            decl = [f"{option_name(name)}/--no-{option_name(name)[2:]}"]
    if cli.short:
        decl.append(cli.short)
    extra = {"min": cli.min} if cli.min is not None else {}
    annotation = Annotated[kind, typer.Option(*decl, help=help_text, **extra)]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation), convert


def _help_order(spec_cls: type[Spec]) -> list[tuple[str, Any]]:
    """The fields in the order their options are listed: ``--model`` first, then the analysis's own fields (those
    its class declares), then the inherited ones (how models are loaded, ``--shard``, ``--remote``)."""
    own = set(vars(spec_cls).get("__annotations__", {}))
    rank = {name: 0 if name == "models" else 1 if name in own else 2 for name in spec_cls.model_fields}
    return sorted(spec_cls.model_fields.items(), key=lambda item: rank[item[0]])


def spec_command(spec_cls: type[Spec]) -> Callable[[Callable], Callable]:
    """Decorator: a typer command with one option per field of ``spec_cls`` (:func:`_help_order`), then the body's own
    options, around a body ``body(ctx, options, **own)``.

    ``options`` is ``{field: value}`` for :func:`ivlens.cli.common.build_spec` (values as the spec takes them:
    comma-separated and repeated options as tuples, parsed options parsed; a bad value is one error line, exit 2);
    ``own`` are the keyword-only parameters after ``options`` in the body's signature, typer options written by
    hand (``--out``, ``--resume``, ``--dry-run``: what the command does with a run, not what the run computes); one
    named in :data:`RUN_OPTIONS` without an annotation takes the shared option.
    The command keeps the body's name and docstring (its help)."""

    def wrap(body: Callable) -> Callable:
        hints = typing.get_type_hints(body, include_extras=True)  # the body's annotations, in its module
        own = [p.replace(annotation=hints[p.name]) if p.name in hints else
               p.replace(annotation=RUN_OPTIONS[p.name][0], default=RUN_OPTIONS[p.name][1]) if p.name in RUN_OPTIONS
               else p for p in inspect.signature(body).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        clash = {p.name for p in own} & set(spec_cls.model_fields)
        if clash:
            raise TypeError(f"{body.__name__}: {sorted(clash)} are fields of {spec_cls.__name__}: their options are "
                            "generated from the spec")
        fields, converts = [], {}
        for name, field in _help_order(spec_cls):
            param, convert = _field_option(spec_cls, name, field)
            fields.append(param)
            if convert is not None:
                converts[name] = convert
        ctx_param = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
        params = [ctx_param, *fields, *own]

        @functools.wraps(body)
        def command(ctx: typer.Context, **given: Any) -> Any:
            mine = {p.name: given.pop(p.name) for p in own}
            with friendly_errors():
                options = {k: converts[k](v) if k in converts else v for k, v in given.items()}
            return body(ctx, options, **mine)

        del command.__wrapped__  # typer reads the options from __signature__, not from the body
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.spec = spec_cls
        command.own_options = tuple(p.name for p in own)
        return command

    return wrap


def analysis_command(analysis: Analysis):
    """The typer command function of ``ivlens <analysis.name>``, built from its spec's fields, with ``--out``,
    ``--resume`` and ``--dry-run``: it validates the spec (one line, exit 2), runs it through
    :func:`ivlens.analyses.run_spec` and prints the run's tables and its directory."""

    def command(ctx: typer.Context, options: dict[str, Any], *, out, resume, dry_run) -> None:
        spec = checked_spec(ctx, analysis.spec, options, resume=resume, out=out, dry_run=dry_run)
        if spec is None:
            return
        with friendly_errors():
            path = Path(run_spec(spec, out=out, resume=resume))
        if spec.shard is not None:
            return shard_written(path, spec.shard)
        run = RunDir.open(path)
        tables = sorted(p.stem for p in path.glob("*.parquet"))
        console.print(f"{analysis.name}: {run.manifest.get('status')}; tables: {', '.join(tables)}")
        console.print(f"results: {path}")

    command.__name__ = analysis.name.replace("-", "_")
    command.__doc__ = (analysis.spec.__doc__ or analysis.name).strip()
    return spec_command(analysis.spec)(command)


def row_sweep_command(spec_cls: type[Spec]) -> Callable[[Callable], Callable]:
    """Decorator: the whole command of a row sweep (``patch``, ``steer``) around a body that only prints what the
    finished run shows, ``body(spec, result, console)``.

    The command has the spec's options and the shared ``--out``, ``--resume`` and ``--dry-run``
    (:func:`spec_command`); it builds the spec (or prints ``--dry-run``'s estimate), runs the registered analysis
    with its rows bar and ends a shard with its closing line (:func:`ivlens.cli.common.run_row_sweep`); then
    ``body`` prints on ``console`` (stderr). The command keeps the body's name and docstring (its help)."""

    def wrap(body: Callable[[Spec, Any, Console], None]) -> Callable:
        def command(ctx: typer.Context, options: dict[str, Any], *, out, resume, dry_run) -> None:
            err = Console(stderr=True)
            run = BY_NAME[spec_cls.analysis].run
            spec, res = run_row_sweep(ctx, spec_cls, options, run, spec_cls.analysis, resume=resume, out=out,
                                      dry_run=dry_run, console=err)
            if res is not None:
                body(spec, res, err)

        for name in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(command, name, getattr(body, name))
        return spec_command(spec_cls)(command)

    return wrap
