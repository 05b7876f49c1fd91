"""Run specs: one typed, frozen pydantic model per analysis, the whole of what a run is asked to do.

Every analysis is one spec plus one ``run_<analysis>(spec)`` in :mod:`ivlens.api`; the CLI, the main job and
the tests build a spec and call that function. A spec:

- has one field per CLI option, named like the option (``--memory-budget`` ↔ ``memory_budget``);
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
from typing import Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import IvlensError
from .runs import content_hash

Format = Literal["raw", "chat"]
Split = Literal["heldout", "train", "all"]
Dtype = Literal["float32", "bfloat16", "float16"]
QueryStyle = Literal["formatted", "bare"]
PatchMode = Literal["transfer", "contrastive"]
PatchTarget = Literal["bare", "formatted"]
Correction = Literal["holm", "bh"]
Backend = Literal["torch", "nnsight"]
Varying = Literal["instructions", "labels"]
Score = Literal["first-token", "answer"]
LinearEstimate = Literal["auto", "on", "off"]
TraceMethod = Literal["exact", "argmax"]
OrganismSize = Literal["small", "tiny"]
OrganismVariant = Literal["gist", "natural"]

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


class _ModelsSpec(Spec):
    """Models and how to load them, shared by the analyses."""

    models: tuple[str, ...] = Field(min_length=1)
    gguf_file: str | None = None
    dtype: Dtype = "float32"
    device: str = "cpu"
    revision: str | None = None
    trust_remote_code: bool = False
    #: ``i/n``: compute only shard i of n of the units of work, for ``ivlens merge`` (:mod:`ivlens.sharding`)
    shard: str | None = None

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


class _RemoteSpec(_ModelsSpec):
    """``--remote``: the analysis's model work runs through its nnsight program on NDIF (:mod:`ivlens.ndif`).

    Options that load or place local weights cannot apply there and are refused with it. ``remote`` enters the
    hash only when set, so the runs made before the option existed keep their hashes."""

    remote: bool = False

    @model_validator(mode="after")
    def _remote_options(self) -> _RemoteSpec:
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


class EvalSpec(_ModelsSpec):
    """``ivlens eval``: instruction-following accuracy with, without and against the instruction."""

    analysis: ClassVar[str] = "eval"
    result_neutral: ClassVar[frozenset[str]] = frozenset({"batch_size", "shard"})

    task: str
    subtask: str | None = None
    samples: int | None = Field(default=None, gt=0)
    format: Format = "raw"
    split: Split = "all"
    query_style: QueryStyle = "formatted"
    prefill: str | None = None
    judge: str | None = Field(default=None, pattern=r"^[\w.]+:\w+$")
    score: Score = "first-token"
    batch_size: int = Field(default=16, gt=0)
    chunk_size: int = Field(default=8, gt=0)
    seed: int = 0


class PatchSpec(_RemoteSpec):
    """``ivlens patch``: IVs of layer sets patched into targets, then interactions and figures."""

    analysis: ClassVar[str] = "patch"
    result_neutral: ClassVar[frozenset[str]] = frozenset({"batch_size", "memory_budget", "threads", "figures", "shard"})

    task: str = "adjectives"
    subtask: str | None = None
    layers: str = "single"
    positions: str = "first,last"
    samples: int | None = Field(default=None, gt=0)
    split: Split = "all"
    mode: PatchMode = "transfer"
    source_model: str | None = None
    target: PatchTarget = "bare"
    format: Format = "raw"
    score: Score = "first-token"
    batch_size: int | None = Field(default=None, gt=0)
    memory_budget: str | None = None
    chunk_size: int = Field(default=25, gt=0)
    seed: int = 0
    effect: str = "delta_logit_vs_target"
    correction: Correction = "holm"
    alpha: float = Field(default=0.05, gt=0, lt=1)
    threads: int | None = Field(default=None, gt=0)
    backend: Backend = "torch"
    figures: bool = True
    #: the rows' first-order estimate (:mod:`ivlens.patching.linear`): ``auto`` = on for sets of ≥ 2 layers
    linear_estimate: LinearEstimate = "auto"
    #: ``K``: run exactly only the singles and each position's top K sets per size by the linear estimate
    screen: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _linear_options(self) -> PatchSpec:
        wants = self.linear_estimate == "on" or self.screen is not None
        what = "--screen" if self.screen is not None else "--linear-estimate on"
        if self.screen is not None and self.linear_estimate == "off":
            raise ValueError("--screen ranks the sets by their linear estimate: drop --linear-estimate off")
        if wants and self.score == "answer":
            raise ValueError(f"{what} needs --score first-token (the estimate is the gradient of the label's "
                             "logit): drop --score answer")
        if wants and self.remote:
            raise ValueError(f"{what} runs the estimate's backward pass on the local engine: drop --remote")
        if self.screen is not None and self.layers.strip() == "single":
            raise ValueError("--screen ranks sets of two or more layers: use --layers pairs, triplets or N-sets "
                             "(e.g. 4-sets)")
        return self

    def result_fields(self) -> dict[str, Any]:
        """As :meth:`Spec.result_fields`; ``linear_estimate`` and ``screen`` enter only when set, so runs made
        before the options existed keep their hashes."""
        fields = super().result_fields()
        if self.linear_estimate == "auto":
            fields.pop("linear_estimate", None)
        if self.screen is None:
            fields.pop("screen", None)
        return fields


class SteerSpec(_ModelsSpec):
    """``ivlens steer``: add ``α · v`` (an IV direction) to the query-only prompt's residual, per layer and α."""

    analysis: ClassVar[str] = "steer"
    result_neutral: ClassVar[frozenset[str]] = frozenset({"batch_size", "memory_budget", "threads", "figures", "shard"})

    task: str = "adjectives"
    subtask: str | None = None
    vectors: str = "mean,diff"
    alphas: str = "0,0.5,1,2,4,8"
    layers: str = "all"
    positions: str = "first,last,all"
    samples: int | None = Field(default=None, gt=0)
    split: Split = "all"
    target: PatchTarget = "bare"
    format: Format = "raw"
    max_per_subtask: int | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, gt=0)
    memory_budget: str | None = None
    chunk_size: int = Field(default=25, gt=0)
    seed: int = 0
    threads: int | None = Field(default=None, gt=0)
    figures: bool = True

    @model_validator(mode="after")
    def _grid(self) -> SteerSpec:
        from .steering.plan import parse_steer_positions
        from .steering.vectors import parse_alphas, parse_vectors

        parse_vectors(self.vectors)
        parse_alphas(self.alphas)
        parse_steer_positions(self.positions)
        return self


class ProbeSpec(_RemoteSpec):
    """``ivlens probe``: probes, LDA and similarity of IVs (residual at T_inst of instruction-only prompts)."""

    analysis: ClassVar[str] = "probe"
    result_neutral: ClassVar[frozenset[str]] = frozenset({"batch_size", "memory_budget", "shard"})

    tasks: tuple[str, ...] = ("adjectives", "animals")
    layers: str = "all"
    varying: Varying = "instructions"
    instructions: dict[str, str] = Field(default_factory=dict)  # extra class name → CSV path
    max_per_subtask: int | None = Field(default=None, gt=0)
    folds: int = Field(default=5, ge=2)
    figure_layers: tuple[int, ...] | None = None
    batch_size: int | None = Field(default=None, gt=0)
    memory_budget: str | None = None
    format: Format = "raw"
    seed: int = 0


class TraceSpec(_ModelsSpec):
    """``ivlens trace``: one prompt's exact paths, or (``compare``) the two subtasks' graphs over samples."""

    analysis: ClassVar[str] = "trace"
    result_neutral: ClassVar[frozenset[str]] = frozenset({"memory_budget", "shard"})

    task: str | None = None
    subtask: str | None = None
    sample: int | None = Field(default=None, ge=0)
    prompt: str | None = None
    target: str | None = None
    method: TraceMethod = "exact"
    compare: bool = False
    samples: int | None = Field(default=50, gt=0)
    split: Split = "all"
    top_k: int = Field(default=20, gt=0)
    beam: int = Field(default=256, gt=0)
    threshold_rank: int = Field(default=10, gt=0)
    start_pos: int | None = None
    end_pos: int | None = None
    from_inst: bool = False
    max_tokens: int | None = Field(default=None, gt=0)
    memory_budget: str | None = None
    format: Format = "raw"
    seed: int = 0
    #: trace ``w · resid_l[t]`` instead of a logit (:mod:`ivlens.tracing.readout`), read at ``position``
    readout: str | None = None
    position: str | None = None
    #: ``--compare``: the model the others' selectivity is compared with (a ``--model`` value or a model's name;
    #: default: the model named ``base``, a study's label), the verdicts' level and correction over layers
    base: str | None = None
    alpha: float = Field(default=0.05, gt=0, lt=1)
    correction: Correction = "holm"

    @field_validator("readout")
    @classmethod
    def _readout_syntax(cls, v: str | None) -> str | None:
        if v is not None:
            from .tracing.readout import parse_readout

            parse_readout(v)  # syntax only: the files are read when the models are known
        return v

    @field_validator("position")
    @classmethod
    def _position_syntax(cls, v: str | None) -> str | None:
        if v is not None:
            from .tracing.readout import check_position

            check_position(v)
        return v

    @model_validator(mode="after")
    def _readout_alone(self) -> TraceSpec:
        if self.position is not None and self.readout is None:
            raise ValueError("--position says where a --readout is read; give --readout too (a logit is read at "
                             "the last position)")
        if self.readout is not None:
            for bad, why in ((self.compare, "--compare compares answer logits"),
                             (self.method != "exact", "--method argmax ranks answer logits"),
                             (self.target is not None, "--target names an answer logit")):
                if bad:
                    raise ValueError(f"--readout traces a direction, not a logit: {why}; drop one of them")
        return self

    @property
    def shardable(self) -> bool:
        """Only ``--compare`` shards (its samples); one traced prompt is one unit of work."""
        return self.compare

    @model_validator(mode="after")
    def _one_input(self) -> TraceSpec:
        if self.compare and self.task is None:
            raise ValueError("--compare needs --task")
        if not self.compare and (self.prompt is None) == (self.task is None):
            raise ValueError("give either --prompt TEXT or --task T (with --sample i)")
        if self.shard is not None and not self.shardable:
            raise ValueError("--shard splits the samples of --compare; one traced prompt is one unit of work")
        if self.compare and self.max_tokens is not None:
            raise ValueError("--max-tokens cuts one traced prompt; --compare traces whole task prompts")
        if self.base is not None and not self.compare:
            raise ValueError("--base names the model the others of --compare are compared with; add --compare")
        return self


class OrganismSpec(Spec):
    """``ivlens organism build``: train base → SFT → DPO and write the card."""

    analysis: ClassVar[str] = "organism"
    result_neutral: ClassVar[frozenset[str]] = frozenset({"force"})

    seed: int = 0
    size: OrganismSize = "small"
    variant: OrganismVariant = "gist"
    force: bool = False
    measure: bool = True
    threads: int = Field(2, ge=1, le=256)  # torch threads the build trains on (its numerics depend on them)


SPECS: dict[str, type[Spec]] = {s.analysis: s for s in (EvalSpec, PatchSpec, ProbeSpec, TraceSpec, OrganismSpec,
                                                         SteerSpec)}


def spec_from_manifest(manifest: dict) -> Spec:
    """The spec a run directory's manifest records (``command`` picks the class)."""
    cls = SPECS.get(manifest.get("command", ""))
    if cls is None or "spec" not in manifest:
        raise SpecError(f"this run directory records no {', '.join(SPECS)} spec (made by an older ivlens?): "
                        "start a new run instead of --resume")
    return cls(**manifest["spec"])
