"""Commands generated from a spec: an analysis registered in :data:`ivlens.analyses.ANALYSES` without a hand-written
command gets ``ivlens <name>`` from its spec's fields, so that a new analysis adds no CLI code.

Each field becomes the option :func:`ivlens.specs.option_name` names (``memory_budget`` → ``--memory-budget``) with
the field's ``description`` as its help (a field without one is a programming error, raised when the CLI is built;
the model-loading fields of :class:`~ivlens.specs.ModelsSpec` take the shared options of :mod:`ivlens.cli.common`).
Types: ``str``, ``int``, ``float``, ``bool`` (``--x/--no-x``), ``Literal`` choices, their optional forms, and
``tuple[str, ...]`` given comma-separated (``--tasks adjectives,animals``). Every command also takes ``--out``,
``--resume`` and ``--dry-run``; it validates the spec (one line, exit 2), runs it through
:func:`ivlens.analyses.run_spec` and prints the run's tables and its directory.
"""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from ivlens.analyses import Analysis, run_spec
from ivlens.cli.common import (
    DeviceOpt,
    DryRunOpt,
    DtypeOpt,
    GgufOpt,
    ModelOpt,
    OutOpt,
    RemoteOpt,
    ResumeOpt,
    RevisionOpt,
    ShardOpt,
    TrustOpt,
    build_spec,
    console,
    friendly_errors,
    shard_written,
)
from ivlens.runs import RunDir, check_out_dir
from ivlens.specs import option_name

#: the shared options of the model-loading fields (their help is written once, in ivlens.cli.common)
SHARED = {"models": ModelOpt, "gguf_file": GgufOpt, "dtype": DtypeOpt, "device": DeviceOpt, "revision": RevisionOpt,
          "trust_remote_code": TrustOpt, "shard": ShardOpt, "remote": RemoteOpt}
#: the options of every command that say where a run goes, not what it computes
RUN_PARAMS = {"out": OutOpt, "resume": ResumeOpt, "dry_run": DryRunOpt}


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
                    "their optional forms, tuple[str, ...]); write the command by hand")


def analysis_command(analysis: Analysis):
    """The typer command function of ``ivlens <analysis.name>``, built from its spec's fields."""
    spec_cls = analysis.spec
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    split: set[str] = set()
    for name, field in spec_cls.model_fields.items():
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        if name in SHARED:
            annotation = SHARED[name]
            default = list(default) if name == "models" and default else default
        else:
            if not field.description:
                raise TypeError(f"{spec_cls.__name__}.{name} has no description: give it Field(description=...) "
                                "(the help of its option)")
            kind, comma = _option_type(name, field.annotation)
            if comma:
                split.add(name)
                default = ",".join(default) if default else None
            decl = option_name(name) if kind is not bool else f"{option_name(name)}/--no-{option_name(name)[2:]}"
            annotation = Annotated[kind, typer.Option(decl, help=field.description)]
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))
    for name, annotation in RUN_PARAMS.items():
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                        default=False if name == "dry_run" else None, annotation=annotation))

    def command(ctx: typer.Context, **given: Any) -> None:
        out, resume, dry_run = given.pop("out"), given.pop("resume"), given.pop("dry_run")
        with friendly_errors():
            options = {k: (tuple(x.strip() for x in v.split(",") if x.strip()) if k in split and v is not None
                           else tuple(v or ()) if k == "models" else v) for k, v in given.items()}
            spec = build_spec(ctx, spec_cls, options, resume)
            check_out_dir(out)  # a dry run refuses what the run would
            if dry_run:
                from ivlens.cli.common import print_dry_run

                print_dry_run(spec)
                return
            path = Path(run_spec(spec, out=out, resume=resume))
        if spec.shard is not None:
            return shard_written(path, spec.shard)
        run = RunDir.open(path)
        tables = sorted(p.stem for p in path.glob("*.parquet"))
        console.print(f"{analysis.name}: {run.manifest.get('status')}; tables: {', '.join(tables)}")
        console.print(f"results: {path}")

    command.__signature__ = inspect.Signature(params)  # typer reads the options from the signature
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = analysis.name.replace("-", "_")
    command.__doc__ = (spec_cls.__doc__ or analysis.name).strip()
    return command
