"""Reading task files (CSV / JSONL with columns ``query,<subtask_1>,<subtask_2>``), rephrasing files and
user task specs (YAML), with errors that name the file, the row and the fix.

Every problem of a file or spec ends in one :class:`~ivlens.tasks.schema.TaskError` (never another
exception; ``tests/tasks/test_tasks_fuzz.py`` checks it on arbitrary bytes and arbitrary YAML). Files are read as
bytes and decoded here, so encodings get their own message:

- UTF-8, with or without a byte-order mark, is accepted; UTF-16 (a BOM ``ff fe`` / ``fe ff``), NUL bytes
  (UTF-16 without a BOM, binary files), zip containers (``.xlsx``) and any other undecodable byte are refused
  with the byte, its offset and line, and "save it as UTF-8";
- CSV: comma-separated with standard quoting; a header that is one column holding ``;``, tabs or ``|`` is
  refused as "separated by ... instead of commas"; header names are stripped; duplicate and unnamed
  columns, ragged rows and over-long cells (an unclosed quote) are refused with their row and line;
  rows whose cells are all blank are skipped and not counted;
- JSONL: one object per line (``\\n``-separated, so a raw U+2028 inside a string is fine), scalar values,
  the keys of the first line on every line, no duplicate keys;
- YAML spec: read with a safe loader that also refuses a key given twice; YAML errors give their line and,
  for tab indentation, "indent with spaces"; keys are checked by :class:`TaskSpec`, one message listing
  every wrong, missing or unknown key with its fix; text may not hold control characters or unpaired
  surrogates (``"\\ud800"``), which no later step could tokenize or print.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import unicodedata
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from .schema import Sample, Subtask, Task, TaskError

log = logging.getLogger(__name__)

TASK_HEADER = "query,<subtask_1>,<subtask_2>"
REPHRASING_HEADER = "index,instruction"
_SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "'|'"}


def _text(v: str, what: str, lines: bool = False) -> str:
    """``v`` unless it holds what no later step can print or tokenize: an unpaired surrogate (from a ``\\ud800``
    escape) or a control character (tabs and newlines allowed where ``lines``)."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"the {what} contains an unpaired surrogate ({v[e.start]!r}); write the character itself "
                         "or a valid \\u escape pair") from None
    bad = [c for c in v if unicodedata.category(c) == "Cc" and not (lines and c in "\t\n\r")]
    if bad:
        raise ValueError(f"the {what} contains the control character {bad[0]!r}; remove it")
    return v


def _path_text(v: str, what: str) -> str:
    if not v.strip():
        raise ValueError(f"the {what} path is empty; write the file's name, relative to the spec")
    return _text(v, f"{what} path")


class SubtaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instruction: str
    rephrasings: str | None = None  # path to an `index,instruction` CSV, relative to the spec
    label_space: list[str] | None = None

    @field_validator("instruction")
    @classmethod
    def _instruction(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the instruction is empty; write the instruction text for this subtask")
        return _text(v, "instruction", lines=True)

    @field_validator("rephrasings")
    @classmethod
    def _rephrasings_path(cls, v: str | None) -> str | None:
        return None if v is None else _path_text(v, "rephrasings")

    @field_validator("label_space")
    @classmethod
    def _labels(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(not x.strip() for x in v):
            raise ValueError("an empty label; remove it or write the answer it stands for")
        return v if v is None else [_text(x, "label") for x in v]


class TaskSpec(BaseModel):
    """A user task: ``data`` (CSV or JSONL), the ``field`` word of the prompt and its subtasks."""

    model_config = ConfigDict(extra="forbid")
    name: str
    data: str
    field: str
    subtasks: dict[str, SubtaskSpec]
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the task name is empty; write a short name, e.g. `name: my_task`")
        return _text(v, "task name")

    @field_validator("field", "description")
    @classmethod
    def _plain(cls, v: str, info: ValidationInfo) -> str:
        return _text(v, info.field_name, lines=info.field_name == "description")

    @field_validator("data")
    @classmethod
    def _data_path(cls, v: str) -> str:
        return _path_text(v, "data")

    @field_validator("subtasks")
    @classmethod
    def _subtask_names(cls, v: dict[str, SubtaskSpec]) -> dict[str, SubtaskSpec]:
        for name in v:
            if not name.strip() or name != name.strip():
                raise ValueError(f"subtask name {name!r} is blank or has surrounding spaces; "
                                 "name it exactly like its column in the data file")
            if name == "query":
                raise ValueError("a subtask is named 'query', the name of the query column; "
                                 "rename the subtask (and its column in the data file)")
            _text(name, "subtask name")
        return v


# ------------------------------------------------------------------------------------------- bytes → text
def _read_bytes(path: Path, missing: str | None = None, named_by: str | None = None) -> bytes:
    """The file's bytes; every way of not being a readable file is a :class:`TaskError`. ``named_by`` is
    where the path comes from (``"`data:` in spec.yaml"``), for the fix."""
    key = f"set {named_by} to" if named_by else "point to"
    try:
        if path.is_dir():
            raise TaskError("is a directory, not a file", file=path, fix=f"{key} a file inside it")
        if path.exists() and not path.is_file():  # reading a pipe would wait forever
            raise TaskError("not a regular file (a pipe, socket or device)", file=path, fix=f"{key} a saved file")
        return path.read_bytes()
    except TaskError:
        raise
    except (FileNotFoundError, NotADirectoryError):
        source = f" ({named_by})" if named_by else ""
        raise TaskError("file not found", file=path, fix=missing or f"check the path{source}; relative paths "
                        "in a spec are relative to the spec") from None
    except OSError as e:
        raise TaskError(f"cannot read it ({e.strerror or e})", file=path,
                        fix="check the path and the file's permissions") from None
    except ValueError:  # an embedded NUL in the path
        raise TaskError("the path contains a NUL character", file=repr(str(path)),
                        fix="check the path") from None


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def decode_text(path: Path, data: bytes) -> str:
    """``data`` as UTF-8 text (a leading byte-order mark dropped), else a :class:`TaskError` that says how
    the file is encoded and to save it as UTF-8."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise TaskError(f"UTF-16 text (byte-order mark {data[:2].hex(' ')}), not UTF-8", file=path,
                        fix="save it as UTF-8 (in Excel: 'CSV UTF-8')")
    if data.startswith(b"PK\x03\x04"):
        raise TaskError("a zip container (an Excel .xlsx or .ods file?), not text", file=path,
                        fix="export it as CSV UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TaskError(f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}, "
                        f"line {_line_of(data, e.start)})", file=path, fix="save it as UTF-8") from None
    if "\x00" in text:
        at = data.index(b"\x00")
        raise TaskError(f"contains a NUL byte at offset {at}, line {_line_of(data, at)} (UTF-16 without a "
                        "byte-order mark, or not a text file)", file=path, fix="save it as UTF-8 text")
    return text


# ------------------------------------------------------------------------------------------- text → rows
def _read_csv(path: Path, text: str, header_hint: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[dict[str, str]] = []
    end = 0  # the line the previous record ended on
    try:
        for cells in reader:
            start, end = end + 1, reader.line_num
            if header is None:
                if not any(c.strip() for c in cells):
                    continue  # blank lines before the header
                header = _check_header(path, [c.strip() for c in cells], end, header_hint)
                continue
            if not any(c.strip() for c in cells):
                continue  # a blank line or a row of empty cells (",,")
            n = len(rows) + 1
            if len(cells) > len(header):
                raise TaskError(f"more cells than columns ({len(cells)} under a {len(header)}-column header, "
                                f"line {end})", file=path, row=n,
                                fix="quote cells that contain commas")
            if len(cells) < len(header):
                unclosed = end > start and any("\n" in c for c in cells)  # a quoted cell ran over lines
                where = f"lines {start}-{end}" if unclosed else f"line {end}"
                raise TaskError(f"fewer cells than columns ({len(cells)} under a {len(header)}-column header, "
                                f"{where})", file=path, row=n,
                                fix=f"close the quote opened on line {start}" if unclosed else
                                "fill in the missing cells or delete the row")
            rows.append(dict(zip(header, cells, strict=True)))
    except csv.Error as e:
        limit = "field larger than field limit" in str(e)
        raise TaskError(f"cannot read it as CSV near line {reader.line_num} ({e})", file=path,
                        fix="a cell that long usually starts with a quote that is never closed: close it, or "
                        "shorten the cell" if limit else "check the quoting on that line") from None
    if header is None:
        raise TaskError("empty file", file=path, fix=f"write the header {header_hint} and one row per line")
    return header, rows


def _check_header(path: Path, header: list[str], line: int, header_hint: str) -> list[str]:
    if len(header) == 1:
        for sep, name in _SEPARATORS.items():
            if sep in header[0]:
                raise TaskError(f"the header {header[0]!r} is a single column: its columns are separated by "
                                f"{name} instead of commas", file=path, line=line,
                                fix="save it as comma-separated CSV (CSV UTF-8)")
    unnamed = [i + 1 for i, c in enumerate(header) if not c]
    if unnamed:
        raise TaskError(f"column(s) {unnamed} of the header have no name (a trailing comma?)", file=path,
                        line=line, fix=f"name every column ({header_hint}) or delete the empty ones")
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise TaskError(f"duplicate column(s) {dup}", file=path, line=line,
                        fix="give each column a different name; each appears once in the header")
    return header


class _DuplicateKey(Exception):
    """A YAML mapping repeats a key (PyYAML would silently keep the last one)."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _cell(path: Path, line: int, key: str, v: Any) -> str:
    if isinstance(v, dict | list):
        raise TaskError(f"the value of {key!r} is a JSON {type(v).__name__}", file=path, line=line,
                        fix="write each cell as a string, a number or null")
    s = "" if v is None else str(v)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise TaskError(f"the value of {key!r} contains an unpaired surrogate ({s[e.start]!r})", file=path,
                        line=line, fix="write the character itself or a valid \\u escape pair") from None
    return s


def _read_jsonl(path: Path, text: str, header_hint: str) -> tuple[list[str], list[dict[str, str]]]:
    rows: list[dict[str, str]] = []
    columns: list[str] = []
    for i, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as e:
            raise TaskError(f"not valid JSON ({e.msg} at column {e.colno})", file=path, line=i,
                            fix="write one JSON object per line") from None
        except _DuplicateKey as e:
            raise TaskError(f"the key {e.args[0]!r} appears twice", file=path, line=i,
                            fix="keep one of them") from None
        except RecursionError:
            raise TaskError("JSON nested too deeply", file=path, line=i,
                            fix="write one flat JSON object per line") from None
        if not isinstance(obj, dict):
            raise TaskError(f"expected a JSON object, found a {type(obj).__name__}", file=path, line=i,
                            fix=f"write one object per line with the keys {header_hint}")
        if not columns:
            columns = list(obj)
            if not columns:
                raise TaskError("an empty JSON object", file=path, line=i,
                                fix=f"write one object per line with the keys {header_hint}")
        new = [k for k in obj if k not in columns]
        if new:
            raise TaskError(f"key(s) {new} that the first line does not have (it has {columns})", file=path,
                            line=i, fix="use the same keys on every line")
        rows.append({k: _cell(path, i, k, v) for k, v in obj.items()})
    if not columns:
        raise TaskError("empty file", file=path, fix=f"write one JSON object per line with the keys {header_hint}")
    return columns, rows


def read_rows(path: Path, header_hint: str = TASK_HEADER, named_by: str | None = None
              ) -> tuple[list[str], list[dict[str, str]]]:
    """Columns and rows of a CSV or JSONL file (``.jsonl``/``.ndjson``; anything else is read as CSV).

    Rows are numbered from 1 (header and blank lines excluded) in errors; ``header_hint`` is the header
    that error messages suggest, ``named_by`` the spec key that names the file (``"`data:` in spec.yaml"``).

    Raises:
        TaskError: the file is missing, not UTF-8 text or malformed (module docstring).
    """
    text = decode_text(path, _read_bytes(path, named_by=named_by))
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return _read_jsonl(path, text, header_hint)
    return _read_csv(path, text, header_hint)


def read_rephrasings(path: Path, named_by: str | None = None) -> tuple[str, ...]:
    """The ``instruction`` column of an ``index,instruction`` CSV, in file order."""
    columns, rows = read_rows(path, REPHRASING_HEADER, named_by)
    if "instruction" not in columns:
        raise TaskError(f"no 'instruction' column (found {columns})", file=path,
                        fix=f"a rephrasing file has the columns {REPHRASING_HEADER}")
    if not rows:
        raise TaskError("no rephrasings, only the header", file=path,
                        fix="add one instruction per row" + (f", or remove {named_by}" if named_by else ""))
    out = []
    for i, r in enumerate(rows, 1):
        text = r.get("instruction", "").strip()
        if not text:
            raise TaskError("empty instruction", file=path, row=i, fix="fill it in or delete the row")
        out.append(text)
    return tuple(out)


def build_samples(path: Path, columns: list[str], rows: list[dict[str, str]], subtasks: list[str]
                  ) -> tuple[tuple[Sample, ...], tuple[str, ...]]:
    """Validate the columns and cells and merge duplicate queries into samples with several answers."""
    expected = ["query", *subtasks]
    missing = [c for c in expected if c not in columns]
    extra = [c for c in columns if c not in expected]
    if missing:
        raise TaskError(f"missing column(s) {missing}", file=path, fix=f"the header must be {','.join(expected)}")
    if extra:
        raise TaskError(f"unexpected column(s) {extra}", file=path,
                        fix=f"the header must be {','.join(expected)} (or add a subtask with that name to the spec)")
    if not rows:
        raise TaskError("no data rows, only the header", file=path, fix="add one row per query under the header")
    merged: dict[str, dict[str, list[str]]] = {}
    row_numbers: dict[str, list[int]] = {}
    for i, r in enumerate(rows, 1):
        for c in expected:
            if not r.get(c, "").strip():
                raise TaskError(f"empty cell in column {c!r}", file=path, row=i, fix="fill it in or delete the row")
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
    for w in warnings:  # kept in Task.warnings and shown by `ivlens tasks show/check`; not repeated by every command
        log.info(w)
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


# ------------------------------------------------------------------------------------------- the YAML spec
class _SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""


def _mapping_without_duplicates(loader: _SpecLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[tuple[str, str]] = set()
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"the key {key_node.value!r} appears twice",
                    key_node.start_mark)
            seen.add(key)
    return loader.construct_mapping(node)


_SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)

_FIELD_HELP = {
    "name": "add `name: <task name>`",
    "data": "add `data: <file>.csv` (the data file, relative to the spec)",
    "field": "add `field: <word shown before the query>`, e.g. `field: Adjective`",
    "subtasks": "add `subtasks:` with one entry per answer column, each with its `instruction:`",
    "instruction": "add `instruction: <text>` under it",
}
_EXPECTED = {
    "name": "text", "data": "a file path", "field": "text", "description": "text", "instruction": "text",
    "rephrasings": "a file path", "subtasks": "a mapping `<subtask name>: {instruction: ...}`",
    "label_space": "a list of answers, e.g. `[yes, no]`",
}


def _explain(err: dict[str, Any]) -> tuple[str, str]:
    """(where and what, fix) for one pydantic error of a task spec."""
    loc_parts = [str(x) for x in err["loc"]]
    loc = ".".join(p if p.isidentifier() or p == "[key]" else repr(p) for p in loc_parts) or "(top level)"
    key = next((p for p in reversed(loc_parts) if p in _EXPECTED), loc_parts[-1] if loc_parts else "")
    kind = err["type"]
    if kind == "missing":
        if key == "instruction":
            return f"{loc}: this subtask has no instruction", _FIELD_HELP["instruction"]
        return f"{loc}: missing", _FIELD_HELP.get(key, f"add `{key}:`")
    if kind == "extra_forbidden":
        model = SubtaskSpec if len(loc_parts) == 3 else TaskSpec
        return f"{loc}: unknown key", f"remove it; the keys are {', '.join(model.model_fields)}"
    if kind == "invalid_key" or loc_parts[-1:] == ["[key]"]:  # a YAML key such as `1:` or `null:`
        parent = ".".join(loc.split(".")[:-1]) or "(top level)"
        return f"{parent}: the key {err.get('input')!r} is not text", f"quote it (`\"{err.get('input')}\":`) or rename it"
    if kind == "value_error":
        what, _, fix = str(err["ctx"]["error"]).partition("; ")
        return f"{loc}: {what}", fix or "correct it"
    got = repr(err.get("input"))
    got = got if len(got) <= 40 else got[:37] + "..."
    fix = f"write it as {_EXPECTED.get(key, 'described in the README')}"
    if _EXPECTED.get(key) == "text" and not isinstance(err.get("input"), dict | list):
        fix += f" (quote it: `{key}: \"{err.get('input')}\"`)"
    msg = err["msg"][:1].lower() + err["msg"][1:]
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        msg = "should be a mapping"
    return f"{loc}: {msg} (got {got})", fix


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

    Raises:
        TaskError: the spec, its data file or a rephrasing file is missing or malformed; the message
            names the file, the row or line, and the fix.
    """
    spec_path = Path(spec_path)
    text = decode_text(spec_path, _read_bytes(spec_path, missing="pass a built-in task name (`ivlens tasks "
                                                               "list`) or the path of a YAML spec"))
    try:
        raw = yaml.load(text, Loader=_SpecLoader)  # a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        lines = text.splitlines()
        tab = mark is not None and mark.line < len(lines) and "\t" in lines[mark.line]
        raise TaskError(f"not valid YAML ({problem})", file=spec_path, line=mark.line + 1 if mark else None,
                        fix="indent with spaces, not tabs" if tab else "keep one of them"
                        if "appears twice" in str(problem) else
                        "check the indentation and quoting there (quote values that contain ': ' or ' #')"
                        ) from None
    except RecursionError:
        raise TaskError("not valid YAML (nested too deeply)", file=spec_path,
                        fix="write the spec as in the README's Tasks section") from None
    except (ValueError, TypeError, OverflowError) as e:  # a tagged value PyYAML cannot build: `!!int x`
        raise TaskError(f"not valid YAML (a tagged value cannot be built: {e})", file=spec_path,
                        fix="remove the `!!` tag or correct the value") from None
    if not isinstance(raw, dict):
        data_file = spec_path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".ndjson")
        raise TaskError(f"expected a mapping with keys name, data, field, subtasks (found {type(raw).__name__})",
                        file=spec_path, fix="this is a data file: pass the YAML spec that names it under `data:`"
                        if data_file else "write the spec as in the README's Tasks section")
    try:
        spec = TaskSpec.model_validate(raw)
    except ValidationError as e:
        problems = [_explain(err) for err in e.errors()]
        if len(problems) == 1:
            raise TaskError(f"invalid task spec: {problems[0][0]}", file=spec_path, fix=problems[0][1]) from None
        raise TaskError("invalid task spec: " + "; ".join(f"{what} - {fix}" for what, fix in problems),
                        file=spec_path, fix="correct each key listed") from None
    if not spec.subtasks:
        raise TaskError("no subtasks", file=spec_path,
                        fix="list at least one under `subtasks:` with its instruction")
    base = spec_path.parent
    data_path = (base / spec.data).resolve()
    columns, rows = read_rows(data_path, "query," + ",".join(spec.subtasks), f"`data:` in {spec_path}")
    names = list(spec.subtasks)
    samples, warnings = build_samples(data_path, columns, rows, names)
    subtasks = {}
    for name, st in spec.subtasks.items():
        reph_path = (base / st.rephrasings).resolve() if st.rephrasings else None
        subtasks[name] = Subtask(
            name=name,
            instruction=st.instruction.strip(),
            rephrasings=read_rephrasings(reph_path, f"`subtasks.{name}.rephrasings:` in {spec_path}")
            if reph_path else (),
            label_space=tuple(st.label_space) if st.label_space else default_label_space(samples, name),
            rephrasings_file=str(reph_path) if reph_path else None,
        )
    return Task(name=spec.name, field=spec.field, subtasks=subtasks, samples=samples, source=str(data_path),
                description=spec.description, warnings=warnings, spec=str(spec_path))
