"""``ivlens trace``'s spec: every option of one run, typed and validated (:mod:`ivlens.specs`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator, model_validator

from ivlens.specs import Correction, Format, ModelsSpec, Split, TraceMethod

from .readout import check_position, parse_readout


class TraceSpec(ModelsSpec):
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
            parse_readout(v)  # syntax only: the files are read when the models are known
        return v

    @field_validator("position")
    @classmethod
    def _position_syntax(cls, v: str | None) -> str | None:
        if v is not None:
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
