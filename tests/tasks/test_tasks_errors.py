"""Malformed task files, one by one: each ends in one TaskError line that names the file, the row or line
where there is one, and the fix (the exact messages are pinned here); and the requirements analyses check
before any work (issue 14, items 2 and 3)."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest
import yaml

from ivlens.tasks import TaskError, load_task, require_contrastive, require_rephrasings

SPEC = {
    "name": "mytask",
    "data": "t.csv",
    "field": "Word",
    "subtasks": {"comp": {"instruction": "Give the comparative."},
                 "ant": {"instruction": "Give the antonym.", "rephrasings": "r.csv"}},
}
GOOD = b"query,comp,ant\nbig,bigger,small\nhot,hotter,cold\n"
REPH = b'index,instruction\n0,"Give the opposite."\n1,Name the antonym.\n'


def _task(d: Path, data: bytes = GOOD, *, name: str = "t.csv", reph: bytes = REPH, spec: dict | str | None = None
          ) -> Path:
    (d / name).write_bytes(data)
    (d / "r.csv").write_bytes(reph)
    text = spec if isinstance(spec, str) else yaml.safe_dump({**SPEC, "data": name} | (spec or {}), sort_keys=False)
    (d / "spec.yaml").write_text(text)
    return d / "spec.yaml"


def _error(tmp_path: Path, spec: Path | str) -> str:
    with pytest.raises(TaskError) as e:
        load_task(spec)
    assert "\n" not in str(e.value)
    return str(e.value).replace(f"{tmp_path}/", "")


LATIN1 = "query,comp,ant\ncafé,x,y\n".encode("latin-1")


@pytest.mark.parametrize(("data", "message"), [
    (LATIN1, "t.csv: not UTF-8 text (byte 0xe9 at offset 18, line 2); save it as UTF-8"),
    (GOOD.decode().encode("utf-16"),
     "t.csv: UTF-16 text (byte-order mark ff fe), not UTF-8; save it as UTF-8 (in Excel: 'CSV UTF-8')"),
    (GOOD.decode().encode("utf-16-le"), "t.csv: contains a NUL byte at offset 1, line 1 (UTF-16 without a "
                                        "byte-order mark, or not a text file); save it as UTF-8 text"),
    (b"PK\x03\x04\x14\x00", "t.csv: a zip container (an Excel .xlsx or .ods file?), not text; export it as CSV UTF-8"),
    (b"query;comp;ant\nbig;bigger;small\n", "t.csv, line 1: the header 'query;comp;ant' is a single column: its "
     "columns are separated by semicolons instead of commas; save it as comma-separated CSV (CSV UTF-8)"),
    (b"query\tcomp\tant\nbig\tbigger\tsmall\n", "t.csv, line 1: the header 'query\\tcomp\\tant' is a single column: "
     "its columns are separated by tabs instead of commas; save it as comma-separated CSV (CSV UTF-8)"),
    (b"query,comp,comp,ant\nbig,bigger,more big,small\n",
     "t.csv, line 1: duplicate column(s) ['comp']; give each column a different name; each appears once in the header"),
    (b"query,comp,ant,\nbig,bigger,small,\n", "t.csv, line 1: column(s) [4] of the header have no name (a trailing "
     "comma?); name every column (query,comp,ant) or delete the empty ones"),
    (b"", "t.csv: empty file; write the header query,comp,ant and one row per line"),
    (b"\n\n", "t.csv: empty file; write the header query,comp,ant and one row per line"),
    (b"query,comp,ant\n", "t.csv: no data rows, only the header; add one row per query under the header"),
    (b"query,comp,ant\nbig,bigger,small\nhot,hotter\n", "t.csv, row 2: fewer cells than columns (2 under a 3-column "
     "header, line 3); fill in the missing cells or delete the row"),
    (b"query,comp,ant\nbig,bigger,small, tall\n", "t.csv, row 1: more cells than columns (4 under a 3-column "
     "header, line 2); quote cells that contain commas"),
    (b'query,comp,ant\n"big,bigger,small\nhot,hotter,cold\n', "t.csv, row 1: fewer cells than columns (1 under a "
     "3-column header, lines 2-3); close the quote opened on line 2"),
    (b'query,comp,ant\nbig,"' + b"x" * 140_000 + b"\n", "t.csv: cannot read it as CSV near line 2 (field larger "
     "than field limit (131072)); a cell that long usually starts with a quote that is never closed: close it, "
     "or shorten the cell"),
    (b"query,comp,ant\nbig,bigger,small\nhot,,cold\n",
     "t.csv, row 2: empty cell in column 'comp'; fill it in or delete the row"),
])
def test_malformed_csv(tmp_path, data, message):
    assert _error(tmp_path, _task(tmp_path, data)) == message


@pytest.mark.parametrize(("data", "message"), [
    (b'{"query": "big", "comp": "bigger", "ant": "small"}\n{"query": "hot", "comp": "hotter", "ant": "cold", "x": 1}',
     "t.jsonl, line 2: key(s) ['x'] that the first line does not have (it has ['query', 'comp', 'ant']); "
     "use the same keys on every line"),
    (b'{"query": "big", "comp": "bigger", "ant": "small", "comp": "more"}',
     "t.jsonl, line 1: the key 'comp' appears twice; keep one of them"),
    (b'{"query": "big", "comp": ["bigger"], "ant": "small"}',
     "t.jsonl, line 1: the value of 'comp' is a JSON list; write each cell as a string, a number or null"),
    (b'\n["big", "bigger", "small"]', "t.jsonl, line 2: expected a JSON object, found a list; write one object "
     "per line with the keys query,comp,ant"),
    (b'{"query": "big", "comp": "bigger", "ant": "small"\n',
     "t.jsonl, line 1: not valid JSON (Expecting ',' delimiter at column 50); write one JSON object per line"),
    (b'{"query": "\\ud800", "comp": "bigger", "ant": "small"}', "t.jsonl, line 1: the value of 'query' contains an "
     "unpaired surrogate ('\\ud800'); write the character itself or a valid \\u escape pair"),
    (b'{"query": ' + b"[" * 100_000 + b"\n", "t.jsonl, line 1: JSON nested too deeply; write one flat JSON object "
     "per line"),
])
def test_malformed_jsonl(tmp_path, data, message):
    assert _error(tmp_path, _task(tmp_path, data, name="t.jsonl")) == message


def test_accepted_variants(tmp_path):
    """A UTF-8 byte-order mark, spaces around header names, CRLF and blank or all-empty rows are fine."""
    t = load_task(_task(tmp_path, codecs.BOM_UTF8 + b" query , comp ,ant\r\n\r\nbig,bigger,small\r\n,,\r\n"
                                                     b"hot,hotter,cold\r\n"))
    assert [(s.query, s.rows) for s in t.samples] == [("big", (1,)), ("hot", (2,))]
    line_sep = '{"query": "a\u2028b", "comp": 1, "ant": null}\n'.replace("null", '"c"').encode()
    t = load_task(_task(tmp_path, line_sep, name="t.jsonl"))
    assert t.samples[0].query == "a\u2028b" and t.samples[0].answers["comp"] == ("1",)


@pytest.mark.parametrize(("reph", "message"), [
    (b"index,instruction\n", "r.csv: no rephrasings, only the header; add one instruction per row, or remove "
     "`subtasks.ant.rephrasings:` in spec.yaml"),
    (b"index,instruction\n0,Give the opposite, please.\n", "r.csv, row 1: more cells than columns (3 under a "
     "2-column header, line 2); quote cells that contain commas"),
    (b"index,text\n0,x\n", "r.csv: no 'instruction' column (found ['index', 'text']); a rephrasing file has the "
     "columns index,instruction"),
    (b"index,instruction\n0,\n", "r.csv, row 1: empty instruction; fill it in or delete the row"),
])
def test_malformed_rephrasings(tmp_path, reph, message):
    assert _error(tmp_path, _task(tmp_path, reph=reph)) == message


@pytest.mark.parametrize(("spec", "message"), [
    ({"data": "."}, ": is a directory, not a file; set `data:` in spec.yaml to a file inside it"),
    ({"data": "nope.csv"}, "nope.csv: file not found; check the path (`data:` in spec.yaml); relative paths in a "
     "spec are relative to the spec"),
    ({"name": 3}, "spec.yaml: invalid task spec: name: input should be a valid string (got 3); write it as text "
     "(quote it: `name: \"3\"`)"),
    ({"colour": "red"}, "spec.yaml: invalid task spec: colour: unknown key; remove it; the keys are name, data, "
     "field, subtasks, description"),
    ({"subtasks": {"query": {"instruction": "x"}, "ant": {"instruction": "y"}}}, "spec.yaml: invalid task spec: "
     "subtasks: a subtask is named 'query', the name of the query column; rename the subtask (and its column in "
     "the data file)"),
    ({"subtasks": {"comp": {"instruction": "x", "label_space": ["a", ""]}, "ant": {"instruction": "y"}}},
     "spec.yaml: invalid task spec: subtasks.comp.label_space: an empty label; remove it or write the answer it "
     "stands for"),
    ("name: a\nname: b\n", "spec.yaml, line 2: not valid YAML (the key 'name' appears twice); keep one of them"),
    ("name: a\nsubtasks:\n\tcomp: x\n",
     "spec.yaml, line 3: not valid YAML (found character '\\t' that cannot start any token); indent with spaces, "
     "not tabs"),
    ("name: !!int x\n", "spec.yaml: not valid YAML (a tagged value cannot be built: invalid literal for int() "
     "with base 10: 'x'); remove the `!!` tag or correct the value"),
    ({"name": "my\x00task"}, "spec.yaml: invalid task spec: name: the task name contains the control character "
     "'\\x00'; remove it"),
    ('name: "\\ud800"\ndata: t.csv\nfield: W\nsubtasks: {comp: {instruction: x}, ant: {instruction: y}}\n',
     "spec.yaml: invalid task spec: name: the task name contains an unpaired surrogate ('\\ud800'); write the "
     "character itself or a valid \\u escape pair"),
    ({"subtasks": {1: {"instruction": "x"}}}, "spec.yaml: invalid task spec: subtasks.'1': the key 1 is not text; "
     "quote it (`\"1\":`) or rename it"),
    ("- name: a\n", "spec.yaml: expected a mapping with keys name, data, field, subtasks (found list); write the "
     "spec as in the README's Tasks section"),
    ("field: x\n", "spec.yaml: invalid task spec: name: missing - add `name: <task name>`; data: missing - add "
     "`data: <file>.csv` (the data file, relative to the spec); subtasks: missing - add `subtasks:` with one entry "
     "per answer column, each with its `instruction:`; correct each key listed"),
])
def test_malformed_spec(tmp_path, spec, message):
    p = _task(tmp_path, spec=spec)
    assert _error(tmp_path, p).replace(str(tmp_path), "") == message


def test_spec_errors_name_the_spec_for_non_utf8_and_data_files(tmp_path):
    p = _task(tmp_path)
    p.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert _error(tmp_path, p) == "spec.yaml: not UTF-8 text (byte 0xe9 at offset 9, line 1); save it as UTF-8"
    assert _error(tmp_path, tmp_path / "t.csv") == (
        "t.csv: expected a mapping with keys name, data, field, subtasks (found str); this is a data file: pass the "
        "YAML spec that names it under `data:`")
    assert _error(tmp_path, tmp_path).replace(str(tmp_path), "") == ": is a directory, not a file; point to a file inside it"


def test_a_pipe_is_refused_not_read(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.csv")
    p = _task(tmp_path, spec={"data": "pipe.csv"})
    (tmp_path / "t.csv").unlink()
    assert _error(tmp_path, p) == ("pipe.csv: not a regular file (a pipe, socket or device); set `data:` in "
                                   f"{tmp_path}/spec.yaml to a saved file").replace(f"{tmp_path}/", "")


# ------------------------------------------------------------------------------------------ requirements
def test_require_rephrasings(tmp_path):
    require_rephrasings(["adjectives", "animals"], n=2)
    p = _task(tmp_path)
    with pytest.raises(TaskError) as e:
        require_rephrasings(p, n=2, analysis="probing")
    assert str(e.value) == (
        f"{p}: probing needs at least 2 rephrasings of each subtask's instruction; task 'mytask': comp has 0; give "
        "each of these subtasks an `index,instruction` CSV with 2 or more rows under `subtasks.comp.rephrasings` "
        "in the spec")


def test_require_contrastive(tmp_path):
    assert require_contrastive("adjectives").name == "adjectives"
    with pytest.raises(TaskError, match=r"^--mode contrastive needs a task with two subtasks; task 'snarks' has 1 "
                                        r"\(snarks\); choose a contrastive task: adjectives, animals"):
        require_contrastive("snarks", analysis="--mode contrastive")
    (tmp_path / "one.csv").write_text("query,comp\nbig,bigger\n")
    p = _task(tmp_path, spec={"data": "one.csv", "subtasks": {"comp": {"instruction": "x"}}})
    with pytest.raises(TaskError, match="list exactly two subtasks under `subtasks:` in the spec"):
        require_contrastive(p)


def test_analyses_check_before_loading_a_model(tmp_path):
    """The checks come first: the model name below does not exist, so any later work would fail otherwise."""
    from ivlens.patching.sweep import patch_sweep
    from ivlens.probing import probe_run

    p = _task(tmp_path)
    with pytest.raises(TaskError, match="probing needs at least 2 rephrasings"):
        probe_run(["no-such-model"], [str(p)], out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(TaskError, match="--mode contrastive needs a task with two subtasks"):
        patch_sweep("no-such-model", "snarks", mode="contrastive")
