"""Run specs: one typed, frozen pydantic model per analysis, the whole of what a run is asked to do.

Every analysis is one spec plus one ``run_<analysis>(spec)`` in :mod:`ivlens.api`; the CLI, the main job and
the tests build a spec and call that function. A spec:

- has one field per CLI option, named like the option (``--memory-budget`` ↔ ``memory_budget``), with the option's
  help as the field's ``description`` and :class:`Cli` for what else the command line needs: the commands are
  generated from the fields (:mod:`ivlens.cli.generated`);
- types every option with a fixed set of values as a ``Literal`` and forbids unknown fields;
- raises :class:`SpecError` (one line: the option, the value, the allowed values) on bad input;
- hashes to :meth:`Spec.hash`, the sha256 of its canonical JSON (:func:`ivlens.runs.content_hash`) without the
  options that cannot change a result (``result_neutral``: memory budget, batch size, threads, figures);
- is stored in the run's ``manifest.json`` (``spec``, ``spec_hash``); ``--resume`` compares it with
  :meth:`Spec.differences`.

>>> spec = EvalSpec(models=("organism-sft",), task="adjectives", samples=20, split="heldout")
>>> spec.hash()[:12]
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import IvlensError
from .runs import content_hash
from .tasks.prompts import PromptFormat as Format
from .tasks.prompts import QueryStyle
from .tasks.selection import Split

#: The option types (each ``Literal`` defined once: the prompt format, query style and split where prompts and
#: samples are made, the others here); a spec field and its CLI option both use these.
__all__ = ["Backend", "Cli", "Correction", "Dtype", "Format", "FormatField", "LinearEstimate", "ModelsSpec",
           "OrganismSize", "OrganismVariant", "PatchMode", "PatchTarget", "QueryStyle", "RemoteSpec", "Score",
           "ScoreField", "Spec", "SpecError", "Split", "SplitField", "TraceMethod",
           "Varying", "field_cli", "option_name"]

Dtype = Literal["float32", "bfloat16", "float16"]
PatchMode = Literal["transfer", "contrastive"]
PatchTarget = QueryStyle  # the query-only target prompt of patch and steer (--target): one of the query styles
Correction = Literal["holm", "bh"]
Backend = Literal["torch", "nnsight"]
Varying = Literal["instructions", "labels"]
Score = Literal["first-token", "answer"]
LinearEstimate = Literal["auto", "on", "off"]
TraceMethod = Literal["exact", "argmax"]
OrganismSize = Literal["small", "tiny"]
OrganismVariant = Literal["gist", "natural"]


@dataclass(frozen=True)
class Cli:
    """How a spec field is given on the command line, where its name, type, default and help (the field's own
    ``description``) do not say it all; put it in the field's annotation: ``Annotated[int | None, Cli(short="-n")]``.
    The commands are generated from the fields (:mod:`ivlens.cli.generated`).

    Attributes:
        short: a one-letter alias (``"-m"``).
        repeat: the option is given once per value (``--model a --model b``) instead of comma-separated.
        flag: a ``bool`` field's only flag, which sets the field to the opposite of its default
            (``"--no-measure"`` for ``measure = True``); default ``--x`` (``--x/--no-x`` when the default is True).
        min: a lower bound the option parser checks (its usage error) rather than the spec.
        parse: the option's text (a list of texts with ``repeat``) → the field's value; it raises
            :class:`SpecError` (or :class:`~ivlens.errors.IvlensError`) naming the option on bad input.
    """

    short: str | None = None
    repeat: bool = False
    flag: str | None = None
    min: int | None = None
    parse: Callable[[Any], Any] | None = None


def field_cli(field: Any) -> Cli:
    """The :class:`Cli` of a pydantic field (a default one when its annotation has none)."""
    return next((m for m in field.metadata if isinstance(m, Cli)), Cli())


#: The option types that several analyses share, with their help (a field and its option both read it).
FormatField = Annotated[Format, Field(description="prompt format: raw (the paper's) or chat")]
SplitField = Annotated[Split, Field(description="queries: an organism's heldout or train split (from its card), "
                                                "or all")]
#: ``--seed`` where it draws the ``--samples`` queries (eval, patch, steer, trace --compare; probes and the logit
#: lens seed other things and say so)
SampleSeedField = Annotated[int, Field(description="seed of the sample draw: which queries --samples picks")]
#: ``--memory-budget`` where batch sizes follow from it (:func:`ivlens.budget.resolve_memory_budget`; the tracer,
#: which cannot batch its graph, words its own default)
MemoryBudgetField = Annotated[str | None, Field(
    description="working memory beyond the weights, e.g. 4GB, 512MiB, 1.5G (default: a quarter of the free RAM, at "
                "most 1 GiB; half the free GPU memory on CUDA); batch sizes follow from it, results do not")]
ScoreField = Annotated[Score, Field(description="first-token: the label's first token (the paper's); answer: whole "
                                                "labels by teacher-forced log-probability, ranked among the label "
                                                "space (use when labels share their first token, e.g. numbers)")]

_DEVICE = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?)$")


class SpecError(IvlensError, ValueError):
    """A spec that does not validate: the message names the option, the value and what is allowed."""


_OPTION_NAMES = {"models": "--model"}  # a repeatable option named in the singular


def option_name(field: str) -> str:
    """The CLI option of a spec field: ``memory_budget`` → ``--memory-budget``, ``models`` → ``--model``."""
    return _OPTION_NAMES.get(field, "--" + field.replace("_", "-"))


def _describe_error(spec_cls: type[BaseModel], err: dict) -> str:
    """One pydantic error as ``--option: 'value' is not ...; allowed: ...``."""
    field = str(err["loc"][0]) if err.get("loc") else ""
    opt = option_name(field) if field else spec_cls.__name__
    value = err.get("input")
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        allowed = ", ".join(option_name(f) for f in spec_cls.model_fields)
        return f"{opt}: unknown option for {spec_cls.__name__} (allowed: {allowed})"
    if kind == "literal_error":
        ann = spec_cls.model_fields[field].annotation
        allowed = [a for a in get_args(ann) if a is not None]
        allowed = [x for a in allowed for x in (get_args(a) or (a,))]
        return f"{opt}: {value!r} is not one of {', '.join(map(str, allowed))}"
    if kind == "too_short":
        return f"{opt}: give at least one"
    msg = err.get("msg", "invalid").removeprefix("Value error, ")
    return f"{opt}: {value!r}: {msg}" if field else msg


class Spec(BaseModel):
    """Base of every analysis spec: frozen, no unknown fields, validated into :class:`SpecError`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: the analysis this spec runs (the run directory's ``command``)
    analysis: ClassVar[str] = ""
    #: fields that never change a result: left out of the hash, and a resumed run takes the new value
    result_neutral: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise SpecError("; ".join(_describe_error(type(self), err) for err in e.errors())) from None

    def result_fields(self) -> dict[str, Any]:
        """The JSON form of the fields that can change a result."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in self.result_neutral}

    def hash(self) -> str:
        """sha256 (hex) of the canonical JSON of :meth:`result_fields` and the analysis name."""
        return content_hash({"analysis": self.analysis, "spec": self.result_fields()})

    @property
    def shardable(self) -> bool:
        """Whether ``shard="i/n"`` can split this run into units of work (:mod:`ivlens.sharding`); the one place
        that says so: a spec that is not shardable refuses ``--shard``, and an executor runs it whole."""
        return False

    def differences(self, other: Spec) -> list[str]:
        """``--option old → new`` for every result field where ``other`` differs from this spec."""
        mine, theirs = self.result_fields(), other.result_fields()
        return [f"{option_name(k)} {mine.get(k)!r} → {theirs.get(k)!r}" for k in dict.fromkeys([*mine, *theirs])
                if mine.get(k) != theirs.get(k)]


class StepRef(NamedTuple):
    """Another step of a study, as an analysis's ``link`` sees it (:class:`ivlens.analyses.analysis.Analysis`): its
    analysis, its run directory relative to the study directory, and its spec."""

    analysis: str
    rel: str
    spec: Spec


def model_names(given: list[str]) -> tuple[str, ...]:
    """``--model`` values → model names: each value is one model, or a comma-separated list of them
    (``-m organism-base,organism-sft`` = ``-m organism-base -m organism-sft``); a value that is an existing path
    stays whole, commas and all."""
    names: list[str] = []
    for value in given:
        if "," in value and not Path(value).exists():
            names += [v.strip() for v in value.split(",") if v.strip()]
        else:
            names.append(value)
    return tuple(names)


class ModelsSpec(Spec):
    """Models and how to load them, shared by the analyses."""

    models: Annotated[tuple[str, ...], Cli(short="-m", repeat=True, parse=model_names)] = Field(
        min_length=1, description="Hub id, local directory, .gguf file, organism-base|sft|dpo or "
                                  "smollm2-135m-instruct; repeat or comma-separate to put models side by side "
                                  "(e.g. organism-base,organism-sft,organism-dpo); not needed with --resume")
    gguf_file: str | None = Field(None, description="GGUF file inside the model repo/directory, or its path")
    dtype: Dtype = Field("float32", description="weights' dtype")
    device: str = Field("cpu", description="cpu | cuda | cuda:N | auto (accelerate device_map)")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    trust_remote_code: bool = Field(False, description="allow custom model code from the repo")
    #: ``i/n``: compute only shard i of n of the units of work, for ``ivlens merge`` (:mod:`ivlens.sharding`)
    shard: str | None = Field(None, description="i/n: compute only shard i of n of the units of work (a SLURM "
                                                "array job's share); `ivlens merge` joins the shards")

    @field_validator("shard")
    @classmethod
    def _shard_form(cls, v: str | None) -> str | None:
        if v is not None:
            from .sharding import Shard

            try:
                Shard.parse(v)
            except IvlensError:
                raise ValueError("give i/n with 0 ≤ i < n (e.g. 0/4 … 3/4)") from None
        return v

    @property
    def shardable(self) -> bool:
        """A sweep over models × chunks of samples (or batches of instructions) shards; see :attr:`Spec.shardable`."""
        return True

    @field_validator("device")
    @classmethod
    def _device_kind(cls, v: str) -> str:
        if not _DEVICE.match(v):
            raise ValueError("not one of cpu, cuda, cuda:N, mps, auto")
        return v

    @field_validator("models")
    @classmethod
    def _distinct(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError("models must be distinct to compare them side by side")
        return v

    def load_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file, "dtype": self.dtype, "device": self.device, "revision": self.revision,
                "trust_remote_code": self.trust_remote_code}


class RemoteSpec(ModelsSpec):
    """``--remote``: the analysis's model work runs through its nnsight program on NDIF (:mod:`ivlens.ndif`).

    Options that load or place local weights cannot apply there and are refused with it. ``remote`` enters the
    hash only when set, so the runs made before the option existed keep their hashes."""

    remote: bool = Field(False, description="run the model work through nnsight on NDIF (a hub id NDIF hosts; key "
                                            "from NDIF_API_KEY; docs/remote.md)")

    @model_validator(mode="after")
    def _remote_options(self) -> RemoteSpec:
        if not self.remote:
            return self
        for field, default, why in (
                ("gguf_file", None, "NDIF runs hub checkpoints, not GGUF files"),
                ("trust_remote_code", False, "NDIF runs the checkpoints it hosts, with no code from their repositories"),
                ("device", "cpu", "the model runs on NDIF's GPUs, not on a local device"),
                ("dtype", "float32", "NDIF runs the checkpoint in the dtype it hosts"),
                ("score", "first-token", "answer scoring runs on the local torch engine only")):
            if getattr(self, field, default) != default:
                raise ValueError(f"--remote cannot honour {option_name(field)} {getattr(self, field)!r}: {why}; "
                                 f"drop {option_name(field)} or --remote")
        return self

    def result_fields(self) -> dict[str, Any]:
        fields = super().result_fields()
        if not self.remote:
            fields.pop("remote", None)
        return fields
