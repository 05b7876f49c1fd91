"""A study: models × tasks × analyses with their options, read from YAML and validated before anything runs.

A study file names the models (a label → a hub id, local directory, ``.gguf`` or ivlens name, optionally with a
``config`` directory that stands in for the model in ``--dry-run``; a path relative to the study file is read from
there), the tasks, the options every model is
loaded with, and one block of options per analysis::

    name: organism
    models:
      base: organism-base                      # label: model
      sft: {model: organism-sft}
    tasks: [adjectives, animals]
    analyses:
      organism: {variant: gist}                # build the organisms if missing; the card joins the report
      eval: {split: [heldout, train]}          # a list sweeps: one step per value
      patch: {tasks: [adjectives], subtask: adj_ant, layers: triplets, samples: 100}
      probe: {layers: all}
      trace: [{compare: true, samples: 20}]    # a list of blocks: one set of steps per block

A block's keys are the options of the analysis's spec (:mod:`ivlens.specs`), plus ``tasks`` (a subset of the
study's tasks; default all of them). Unknown keys and bad values are refused at load time, naming the key, the
value and what is allowed (:class:`StudyError`, one line, exit code 2 in the CLI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ivlens.analyses import SPECS
from ivlens.errors import IvlensError
from ivlens.specs import Dtype


class StudyError(IvlensError, ValueError):
    """A study file that does not validate: the message names the key, the value and what is allowed."""


class ModelEntry(BaseModel):
    """One model of a study: what to load, and (``config``) a directory with its ``config.json`` that a dry run
    sizes instead, so a study of hub checkpoints can be estimated with no weights and no network."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    config: str | None = None


def _describe(cls: type[BaseModel], err: dict) -> str:
    where = ".".join(str(x) for x in err.get("loc", ())) or "study"
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        parent = err["loc"][:-1]
        allowed = ModelEntry.model_fields if parent[:1] == ("models",) else cls.model_fields
        return f"{where}: unknown key (allowed: {', '.join(allowed)})"
    if kind == "literal_error":
        allowed = ", ".join(str(a) for a in get_args(Dtype))
        return f"{where}: {err.get('input')!r} is not one of {allowed}"
    if kind == "missing":
        return f"{where}: missing (required)"
    return f"{where}: {err.get('input')!r}: {err.get('msg', 'invalid').removeprefix('Value error, ')}"


class StudySpec(BaseModel):
    """A validated study file (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    models: dict[str, ModelEntry] = Field(default_factory=dict)
    tasks: tuple[str, ...] = ()
    dtype: Dtype = "float32"
    device: str = "cpu"
    revision: str | None = None
    trust_remote_code: bool = False
    analyses: dict[str, tuple[dict[str, Any], ...]] = Field(min_length=1)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise StudyError("; ".join(_describe(StudySpec, err) for err in e.errors())) from None

    @field_validator("models", mode="before")
    @classmethod
    def _model_shorthand(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: {"model": m} if isinstance(m, str) else m for k, m in v.items()}
        return v

    @field_validator("analyses", mode="before")
    @classmethod
    def _known_analyses(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            raise ValueError("a mapping of analysis → options (or a list of option blocks)")
        for name in v:
            if name not in SPECS:
                raise ValueError(f"unknown analysis {name!r} (allowed: {', '.join(SPECS)})")
        return {name: (blocks if isinstance(blocks, list) else [blocks or {}]) for name, blocks in v.items()}

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.models)

    def load_options(self) -> dict[str, Any]:
        """The options every model of the study is loaded with (a block may override them)."""
        return {"dtype": self.dtype, "device": self.device, "revision": self.revision,
                "trust_remote_code": self.trust_remote_code}


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study file (YAML)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such study file")
    from ivlens.tasks.loading import decode_text
    from ivlens.tasks.schema import TaskError

    try:
        text = decode_text(path, path.read_bytes())  # the task files' decoder: its message names the byte
    except TaskError as e:
        raise StudyError(str(e)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise StudyError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise StudyError(f"{path}: a study file is a mapping with keys {', '.join(StudySpec.model_fields)}")
    return StudySpec(**_paths_from_the_file(data, path.resolve().parent))


def _paths_from_the_file(data: dict, here: Path) -> dict:
    """A model's ``model`` or ``config`` given as a path relative to the study file (``../tests/data/…``) made
    absolute, so the study runs from any directory; hub ids, ivlens names and other paths are kept as written."""
    models = data.get("models")
    if not isinstance(models, dict):
        return data

    def resolved(value):
        if isinstance(value, str) and not Path(value).is_absolute() and (here / value).exists():
            return str((here / value).resolve())
        return value

    out = {}
    for label, entry in models.items():
        if isinstance(entry, dict):
            entry = {k: resolved(v) if k in ("model", "config") else v for k, v in entry.items()}
        out[label] = entry
    return {**data, "models": out}
