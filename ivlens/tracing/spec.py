"""``ivlens trace``'s spec: every option of one run, typed, validated and with its help (:mod:`ivlens.specs`)."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, field_validator, model_validator

from ivlens.specs import Cli, Correction, FormatField, ModelsSpec, SampleSeedField, SplitField, TraceMethod

from .readout import check_position, parse_readout


class TraceSpec(ModelsSpec):
    """``ivlens trace``: one prompt's exact paths, or (``compare``) the two subtasks' graphs over samples."""

    analysis: ClassVar[str] = "trace"
    result_neutral: ClassVar[frozenset[str]] = frozenset({"memory_budget", "shard", "figures"})

    task: Annotated[str | None, Cli(short="-t")] = Field(None, description="built-in task or YAML spec (with "
                                                                           "--sample/--compare)")
    subtask: Annotated[str | None, Cli(short="-s")] = Field(None, description="subtask whose instruction and answer "
                                                                              "to trace")
    sample: int | None = Field(None, ge=0, description="index of the task sample to trace")
    prompt: str | None = Field(None, description="trace this text instead of a task sample")
    target: str | None = Field(None, description="answer label (default: the task's answer, or the model's top "
                                                 "token)")
    method: TraceMethod = Field("exact", description="exact, or argmax (the paper's tracer, with its error)")
    compare: bool = Field(False, description="circuit selectors: instruction A vs B over samples")
    samples: Annotated[int | None, Cli(short="-n")] = Field(50, gt=0, description="--compare: number of samples "
                                                                                  "(default 50)")
    split: SplitField = "all"
    top_k: int = Field(20, gt=0, description="paths to report (and edges for top-k overlap)")
    beam: int = Field(256, gt=0, description="beam width of the path search")
    threshold_rank: int = Field(10, gt=0, description="argmax: keep paths ranking the answer below this")
    start_pos: int | None = Field(None, description="first source position of the paths (negative from the end)")
    end_pos: int | None = Field(None, description="last source position of the paths (inclusive)")
    from_inst: bool = Field(False, description="sources = T_inst (task prompts): paths leaving the instruction")
    max_tokens: int | None = Field(None, gt=0, description="trace only the last N tokens of the prompt (the graph "
                                                           "costs L·H·T²)")
    memory_budget: str | None = Field(None, description="working memory beyond the weights, e.g. 4GB, 512MiB, 1.5G "
                                                        "(default: 80% of the free memory, less the weights: the "
                                                        "graph cannot be split into batches); results do not "
                                                        "depend on it")
    format: FormatField = "raw"
    seed: SampleSeedField = 0
    #: trace ``w · resid_l[t]`` instead of a logit (:mod:`ivlens.tracing.readout`), read at ``position``
    readout: str | None = Field(None, description="trace w · resid_l[t] instead of a logit: "
                                                  "probe:RUN_DIR:LAYER[:CLASS], means:RUN_DIR:LAYER[:A-B], "
                                                  "lda:RUN_DIR:LAYER ([@MODEL]), or "
                                                  "vector:FILE.npy|.safetensors:LAYER")
    position: str | None = Field(None, description="where --readout is read: t_inst, last (default) or a token "
                                                   "index")
    #: ``--compare``: the model the others' selectivity is compared with (a ``--model`` value or a model's name;
    #: default: the model named ``base``, a study's label), the verdicts' level and correction over layers
    base: str | None = Field(None, description="--compare: the base model the others' selectivity is compared with "
                                               "(default: a model named base)")
    alpha: float = Field(0.05, gt=0, lt=1, description="--compare: significance level of the selectivity verdicts, "
                                                       "after correction over layers")
    correction: Correction = Field("holm", description="--compare: multiple-comparison correction over layers")
    figures: bool = Field(True, description="Write figures.")

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
