"""Reading task files (CSV / JSONL with columns ``query,<subtask_1>,<subtask_2>``), rephrasing files and
user task specs (YAML), with errors that name the file, the row and the fix."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from .schema import Sample, Subtask, Task, TaskError

log = logging.getLogger(__name__)


class SubtaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instruction: str
    rephrasings: str | None = None  # path to an `index,instruction` CSV, relative to the spec
    label_space: list[str] | None = None

    @field_validator("instruction")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the instruction is empty; write the instruction text for this subtask")
        return v


class TaskSpec(BaseModel):
    """A user task: ``data`` (CSV or JSONL), the ``field`` word of the prompt and its subtasks."""

    model_config = ConfigDict(extra="forbid")
    name: str
    data: str
    field: str
    subtasks: dict[str, SubtaskSpec]
    description: str = ""


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Columns and rows of a CSV or JSONL file; rows are numbered from 1 (header excluded) in errors."""
    if not path.exists():
        raise TaskError(f"{path}: file not found; check the path (relative paths in a spec are relative to the spec)")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows: list[dict[str, str]] = []
        columns: list[str] = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}, line {i}: not valid JSON ({e.msg}); write one JSON object per line") from None
            if not isinstance(obj, dict):
                raise TaskError(f"{path}, line {i}: expected a JSON object with the task's columns")
            if not columns:
                columns = list(obj)
            rows.append({k: "" if v is None else str(v) for k, v in obj.items()})
        return columns, rows
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        rows = [{k: (v or "") for k, v in r.items() if k is not None} | ({"__extra__": "x"} if None in r else {})
                for r in reader]
    return columns, rows


def read_rephrasings(path: Path) -> tuple[str, ...]:
    """The ``instruction`` column of an ``index,instruction`` CSV, in file order."""
    columns, rows = read_rows(path)
    if "instruction" not in columns:
        raise TaskError(f"{path}: no 'instruction' column (found {columns}); a rephrasing file has columns index,instruction")
    out = []
    for i, r in enumerate(rows, 1):
        text = r["instruction"].strip()
        if not text:
            raise TaskError(f"{path}, row {i}: empty instruction; fill it in or delete the row")
        out.append(text)
    return tuple(out)


def build_samples(path: Path, columns: list[str], rows: list[dict[str, str]], subtasks: list[str]
                  ) -> tuple[tuple[Sample, ...], tuple[str, ...]]:
    """Validate the columns and cells and merge duplicate queries into samples with several answers."""
    expected = ["query", *subtasks]
    missing = [c for c in expected if c not in columns]
    extra = [c for c in columns if c not in expected]
    if missing:
        raise TaskError(f"{path}: missing column(s) {missing}; the header must be {','.join(expected)}")
    if extra:
        raise TaskError(f"{path}: unexpected column(s) {extra}; the header must be {','.join(expected)} "
                        "(or add a subtask with that name to the spec)")
    if not rows:
        raise TaskError(f"{path}: no data rows")
    merged: dict[str, dict[str, list[str]]] = {}
    row_numbers: dict[str, list[int]] = {}
    for i, r in enumerate(rows, 1):
        if "__extra__" in r:
            raise TaskError(f"{path}, row {i}: more cells than columns; quote cells that contain commas")
        for c in expected:
            if not r.get(c, "").strip():
                raise TaskError(f"{path}, row {i}: empty cell in column {c!r}; fill it in or delete the row")
        q = r["query"].strip()
        slot = merged.setdefault(q, {s: [] for s in subtasks})
        for s in subtasks:
            a = r[s].strip()
            if a not in slot[s]:
                slot[s].append(a)
        row_numbers.setdefault(q, []).append(i)
    warnings = []
    for q, nums in row_numbers.items():
        if len(nums) > 1:
            answers = "; ".join(f"{s}: {' / '.join(merged[q][s])}" for s in subtasks)
            warnings.append(f"{path.name}: query {q!r} appears in rows {nums}; every listed answer is accepted ({answers})")
    for w in warnings:
        log.warning(w)
    samples = tuple(
        Sample(index=k, query=q, answers={s: tuple(a) for s, a in ans.items()}, rows=tuple(row_numbers[q]))
        for k, (q, ans) in enumerate(merged.items())
    )
    return samples, tuple(warnings)


def default_label_space(samples: tuple[Sample, ...], subtask: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for s in samples:
        for a in s.answers[subtask]:
            seen.setdefault(a, None)
    return tuple(seen)


def load_task_spec(spec_path: str | Path) -> Task:
    """Load a user task from a YAML spec::

        name: my_task
        data: my_task.csv          # columns: query,<subtask_1>,<subtask_2>
        field: Adjective           # prompt: "{instruction} {field}: {query}. Answer:"
        subtasks:
          adj_comp:
            instruction: Given an adjective, state its comparative form.
            rephrasings: adj_comp_rephrased.csv    # optional, columns index,instruction
          adj_ant:
            instruction: Given an adjective, state its antonym.
            label_space: [small, bad]              # optional; default: the column's answers
    """
    spec_path = Path(spec_path)
    if not spec_path.exists():
        raise TaskError(f"{spec_path}: task spec not found; pass a built-in task name (`ivlens tasks list`) or a YAML spec path")
    try:
        raw = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise TaskError(f"{spec_path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise TaskError(f"{spec_path}: expected a mapping with keys name, data, field, subtasks")
    try:
        spec = TaskSpec.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msg = err["msg"]
            if err["type"] == "missing" and "subtasks" in loc and loc.endswith("instruction"):
                msg = "this subtask has no instruction; add `instruction: <text>` under it"
            problems.append(f"{loc}: {msg}")
        raise TaskError(f"{spec_path}: invalid task spec: " + "; ".join(problems)) from None
    if not spec.subtasks:
        raise TaskError(f"{spec_path}: no subtasks; list at least one under `subtasks:` with its instruction")
    base = spec_path.parent
    data_path = (base / spec.data).resolve()
    columns, rows = read_rows(data_path)
    names = list(spec.subtasks)
    samples, warnings = build_samples(data_path, columns, rows, names)
    subtasks = {}
    for name, st in spec.subtasks.items():
        reph = read_rephrasings((base / st.rephrasings).resolve()) if st.rephrasings else ()
        subtasks[name] = Subtask(
            name=name,
            instruction=st.instruction.strip(),
            rephrasings=reph,
            label_space=tuple(st.label_space) if st.label_space else default_label_space(samples, name),
            rephrasings_file=str((base / st.rephrasings).resolve()) if st.rephrasings else None,
        )
    return Task(name=spec.name, field=spec.field, subtasks=subtasks, samples=samples, source=str(data_path),
                description=spec.description, warnings=warnings)
