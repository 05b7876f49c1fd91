"""Property tests of the task layer: whatever bytes or YAML a user hands over, loading ends in a task or in
one :class:`TaskError` that names the file (and the row or line where there is one) and the fix; never in
another exception (issue 14, item 2).

The examples are derandomised and their number fixed (profile ``ivlens-tasks``), so the suite is the same on
every run and in CI. For a longer local hunt: ``IVLENS_FUZZ_PROFILE=ivlens-tasks-deep pytest tests/tasks/test_tasks_fuzz.py``
(random seeds, 20x the examples).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ivlens.tasks import Task, TaskError, load_task
from ivlens.tasks.loading import read_rephrasings, read_rows

settings.register_profile(
    "ivlens-tasks", max_examples=120, derandomize=True, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
settings.register_profile("ivlens-tasks-deep", parent=settings.get_profile("ivlens-tasks"), max_examples=2400,
                          derandomize=False)
FUZZ = settings.get_profile(os.environ.get("IVLENS_FUZZ_PROFILE", "ivlens-tasks"))

SPEC = {
    "name": "fuzz",
    "data": "t.csv",
    "field": "Word",
    "subtasks": {"comp": {"instruction": "Give the comparative."},
                 "ant": {"instruction": "Give the antonym.", "rephrasings": "r.csv"}},
}
GOOD_CSV = "query,comp,ant\nbig,bigger,small\nhot,hotter,cold\n"
GOOD_REPHRASINGS = 'index,instruction\n0,"Give the opposite."\n1,Name the antonym.\n'
FILES = ("t.csv", "t.jsonl", "r.csv", "spec.yaml")
HUGE = "x" * 140_000  # over the csv module's 131072-character cell limit


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _write(d: Path, *, data: bytes | None = None, data_name: str = "t.csv", rephrasings: bytes | None = None,
           spec: bytes | str | dict | None = None) -> Path:
    """A user task in ``d``: good files unless replaced; returns the spec's path."""
    for name in FILES:
        (d / name).unlink(missing_ok=True)
    (d / data_name).write_bytes(GOOD_CSV.encode() if data is None else data)
    (d / "r.csv").write_bytes(GOOD_REPHRASINGS.encode() if rephrasings is None else rephrasings)
    if spec is None or isinstance(spec, dict):
        spec = yaml.safe_dump({**SPEC, "data": data_name} if spec is None else spec, sort_keys=False)
    p = d / "spec.yaml"
    p.write_bytes(spec.encode() if isinstance(spec, str) else spec)
    return p


def _outcome(load, d: Path | None = None):
    """``load()``'s task, or its TaskError after checking that the error names a file and the fix."""
    try:
        out = load()
        event("loaded")
        return out
    except TaskError as e:
        event(f"TaskError: {e.problem.split('(')[0][:40]}")  # shown by --hypothesis-show-statistics
        msg = str(e)
        assert e.file, f"no file named: {msg!r}"
        assert e.file in msg and e.fix and msg.endswith(e.fix), msg
        if d is not None and not e.file.startswith("built-in"):
            named = Path(e.file.strip("'")).resolve()
            assert d.resolve() in (named, named.parent), msg  # a file of the task (or its folder)
        assert e.row is None or e.row >= 1, msg
        assert e.line is None or e.line >= 1, msg
        assert "\n" not in msg, f"not one line: {msg!r}"
        return e


def _check_task(t: Task) -> None:
    """What every loaded task guarantees to the analyses."""
    assert t.samples and t.subtasks
    for s in t.samples:
        assert s.query and s.query == s.query.strip() and s.rows
        for name in t.subtasks:
            assert s.answers[name] and all(a and a == a.strip() for a in s.answers[name])
    for st_ in t.subtasks.values():
        assert st_.instruction and st_.label_space and all(r for r in st_.rephrasings)


# ------------------------------------------------------------------------------------------ strategies
# Each strategy mostly builds a good file and damages one thing in it, so that the later checks (columns,
# cells, rephrasings, spec keys) are reached as often as the early ones (encoding, header).
def mostly(draw, good, bad, p_good: int = 7):
    """``good`` in about ``p_good`` draws out of 10, else a draw from ``bad`` (both strategies)."""
    return draw(good if draw(st.integers(0, 9)) < p_good else bad)


NAMES = st.sampled_from(["query", "comp", "ant", "", " comp ", "Query", "extra", "a,b", 'q"x', "index",
                         "instruction", "\ufeffquery"])
GOOD_CELLS = st.sampled_from(["big", "bigger", "small", "hot", "cold", " tall ", "a,b", 'say "hi"', "x\ny", "é",
                              "\u2028"])
CELLS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", '"', '"open', "a;b", "x\r\ny", "\x00", "\t", "#", "null", HUGE]),
)
ENCODINGS = st.sampled_from(["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "latin-1", "cp1252"])


@st.composite
def csv_files(draw, good_header=("query", "comp", "ant"), names=NAMES) -> bytes:
    """Tables with arbitrary headers, ragged rows and awkward cells, written with an arbitrary delimiter,
    quoting and encoding, then possibly damaged."""
    header = mostly(draw, st.just(list(good_header)), st.lists(names, max_size=5))
    n = len(good_header)
    good_row = st.lists(GOOD_CELLS, min_size=n, max_size=n)
    bad_row = st.one_of(st.lists(CELLS, min_size=n, max_size=n), st.lists(st.one_of(GOOD_CELLS, CELLS), max_size=5))
    rows = draw(st.lists(st.integers(0, 9).flatmap(lambda k: good_row if k < 8 else bad_row), max_size=5))
    delimiter = mostly(draw, st.just(","), st.sampled_from([";", "\t", "|"]), 8)
    quoting = draw(st.sampled_from(["minimal", "minimal", "all", "none", "raw"]))
    buf = io.StringIO(newline="")
    lineterminator = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    if quoting != "raw":
        mode = {"minimal": csv.QUOTE_MINIMAL, "all": csv.QUOTE_ALL, "none": csv.QUOTE_NONE}[quoting]
        w = csv.writer(buf, delimiter=delimiter, quoting=mode, escapechar="\\", lineterminator=lineterminator)
        try:
            w.writerows([header, *rows])
        except csv.Error:  # QUOTE_NONE cannot write a record of one empty field: join by hand instead
            quoting = "raw"
    if quoting == "raw":  # joined by hand: unbalanced quotes, unescaped delimiters
        buf = io.StringIO(newline="")
        buf.write(lineterminator.join(delimiter.join(r) for r in [header, *rows]))
    data = buf.getvalue().encode(mostly(draw, st.just("utf-8"), ENCODINGS, 8), errors="replace")
    damage = mostly(draw, st.just("none"), st.sampled_from(["truncate", "blank lines", "junk"]))
    if damage == "truncate" and data:
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif damage == "blank lines":
        data = b"\n\n" + data.replace(b"\n", b"\n\n") + b"\n ,\n,,\n"
    elif damage == "junk":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    return data


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
                        st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                              max_size=2))


@st.composite
def jsonl_files(draw) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        kind = mostly(draw, st.just("good"), st.sampled_from(["object", "junk", "scalar", "duplicate", "blank"]), 8)
        if kind == "good":
            obj = {"query": draw(st.one_of(GOOD_CELLS, st.text(max_size=8))),
                   "comp": draw(st.one_of(GOOD_CELLS, st.integers(), st.booleans(), st.floats())),
                   "ant": mostly(draw, GOOD_CELLS, st.none(), 9)}
            lines.append(json.dumps(obj, ensure_ascii=draw(st.booleans())))
        elif kind == "object":
            obj = draw(st.dictionaries(NAMES, JSON_VALUES, max_size=4))
            lines.append(json.dumps(obj, ensure_ascii=draw(st.booleans())))
        elif kind == "junk":
            lines.append(draw(st.text(max_size=20)))
        elif kind == "scalar":
            lines.append(json.dumps(draw(JSON_VALUES)))
        elif kind == "duplicate":
            lines.append('{"query": "a", "comp": "b", "ant": "c", "comp": "d"}')
        else:
            lines.append("   ")
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines)
    for bad in draw(st.lists(st.sampled_from(['"\\ud800"', "[" * 3000, '"\u2028"']), max_size=1)):
        text += "\n" + '{"query": ' + bad + ', "comp": "x", "ant": "y"}'
    return text.encode(mostly(draw, st.just("utf-8"), ENCODINGS, 8), errors="replace")


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10),
                    st.sampled_from(["t.csv", "r.csv", ".", "", "missing.csv", "spec.yaml", "a\x00b", "x" * 300]))
KEYS = st.one_of(st.text(max_size=6), st.integers(), st.none(), st.booleans())
ANY = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(KEYS, inner, max_size=3)),
                   max_leaves=8)
GOOD_SUBTASK = st.fixed_dictionaries(
    {"instruction": st.sampled_from(["Do it.", "Give the antonym."])},
    optional={"rephrasings": st.sampled_from(["r.csv", "r.csv", "t.csv", "missing.csv", ".", ""]),
              "label_space": st.one_of(st.lists(GOOD_CELLS, max_size=3), st.lists(st.sampled_from(["", " "]),
                                                                                   min_size=1, max_size=2))})
BAD_SUBTASK = st.one_of(
    st.fixed_dictionaries({"instruction": st.sampled_from(["", " ", "Do it."])},
                          optional={"rephrasings": SCALARS, "label_space": ANY, "other": ANY}), ANY)


@st.composite
def spec_documents(draw) -> dict | list | str | int | None:
    """Task specs with missing, unknown and wrongly typed keys, or not a mapping at all."""
    if draw(st.integers(0, 19)) == 0:
        return draw(ANY)
    spec: dict = {}
    for key in ("name", "data", "field", "subtasks", "description", "extra"):
        choice = mostly(draw, st.just("good"), st.sampled_from(["missing", "any"]), 8)
        if choice == "missing" or (key == "extra" and choice == "good"):
            continue
        if choice == "any":
            spec[key] = draw(ANY)
        elif key == "subtasks":
            names = mostly(draw, st.just(["comp", "ant"]), st.lists(st.one_of(NAMES, KEYS), max_size=3, unique=True), 8)
            spec[key] = {n: mostly(draw, GOOD_SUBTASK, BAD_SUBTASK, 8) for n in names}
        else:
            spec[key] = SPEC.get(key, "text")
    return spec


GOOD_YAML = yaml.safe_dump(SPEC, sort_keys=False).splitlines(keepends=True)
YAML_SNIPPETS = st.sampled_from([
    "name: fuzz\n", "data: t.csv\n", "field: Word\n", "subtasks:\n", "  comp:\n", "    instruction: Do it.\n",
    "  ant:\n", "    instruction: &i Say it.\n", "    rephrasings: *i\n", "    rephrasings: r.csv\n",
    "\tinstruction: tabbed\n", "name: a\nname: b\n", "base: &b {instruction: x}\n", "  comp: {<<: *b}\n",
    "---\n", "- a\n", "? [a, b]\n: c\n", "!!python/object/apply:os.getcwd []\n", "data: .\n", "data: ''\n",
    "    label_space: [yes, no, '']\n", "subtasks: [1, 2]\n", "name: 2020-01-01\n", "*undefined\n", "{a: [\n",
    "name: 'unclosed\n", "%YAML 1.1\n---\n", "data: t.csv # comment\n", "    label_space: *i\n",
    "    label_space: [small, cold]\n", "description: a task\n", "  other:\n", "    extra: 1\n",
    "name: !!int x\n", "name: !!binary AAEC\n", 'name: "\\ud800"\n', "field: !!timestamp 2020-13-45\n",
    "1: x\n", "null: x\n", "  2: {instruction: x}\n", "    instruction: !!float nan\n", 'field: "\\x07"\n',
    "    label_space: !!set {a, b}\n", "    instruction: \"a\\nb\\tc\"\n", "name: !!float 1e99999\n",
])


@st.composite
def yaml_texts(draw) -> str:
    """The good spec's lines with a few lines deleted, duplicated, tab-indented or inserted from snippets."""
    lines = list(GOOD_YAML)
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(lines)))
        op = draw(st.sampled_from(["insert", "insert", "delete", "duplicate", "tab"]))
        if op == "insert" or not lines or i == len(lines):
            lines.insert(i, draw(YAML_SNIPPETS))
        elif op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        else:
            lines[i] = lines[i].replace("  ", "\t", 1)
    return "".join(lines)


# ------------------------------------------------------------------------------------------ properties
@FUZZ
@given(data=csv_files())
def test_task_csv_loads_or_explains(workdir, data):
    t = _outcome(lambda: load_task(_write(workdir, data=data)), workdir)
    if isinstance(t, Task):
        _check_task(t)


@FUZZ
@given(data=csv_files(good_header=("index", "instruction"),
                      names=st.sampled_from(["index", "instruction", "", "Instruction", "extra", "index"])))
def test_rephrasing_csv_loads_or_explains(workdir, data):
    (workdir / "r.csv").write_bytes(data)
    out = _outcome(lambda: read_rephrasings(workdir / "r.csv"), workdir)
    if not isinstance(out, TaskError):
        assert out and all(x and x == x.strip() for x in out)


@FUZZ
@given(data=jsonl_files())
def test_task_jsonl_loads_or_explains(workdir, data):
    t = _outcome(lambda: load_task(_write(workdir, data=data, data_name="t.jsonl")), workdir)
    if isinstance(t, Task):
        _check_task(t)


@FUZZ
@given(target=st.sampled_from(["t.csv", "t.jsonl", "r.csv", "spec.yaml"]),
       prefix=st.sampled_from([b"", codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, b"PK\x03\x04",
                               b"query,comp,ant\n", b"\x00\x00\xfe\xff"]),
       junk=st.binary(max_size=300))
def test_arbitrary_bytes_load_or_explain(workdir, target, prefix, junk):
    data = prefix + junk
    if target == "spec.yaml":
        spec = _write(workdir, spec=data)
    elif target == "r.csv":
        spec = _write(workdir, rephrasings=data)
    else:
        spec = _write(workdir, data=data, data_name=target)
    _outcome(lambda: load_task(spec), workdir)
    if target != "spec.yaml":
        _outcome(lambda: read_rows(workdir / target), workdir)


@FUZZ
@given(doc=spec_documents(), tabs=st.booleans())
def test_random_spec_documents_load_or_explain(workdir, doc, tabs):
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    if tabs:
        text = text.replace("  ", "\t")
    t = _outcome(lambda: load_task(_write(workdir, spec=text)), workdir)
    if isinstance(t, Task):
        _check_task(t)


@FUZZ
@given(text=yaml_texts())
def test_damaged_yaml_loads_or_explains(workdir, text):
    t = _outcome(lambda: load_task(_write(workdir, spec=text)), workdir)
    if isinstance(t, Task):
        _check_task(t)


@FUZZ
@given(key=st.one_of(st.text(max_size=30), st.sampled_from(["adjectives", ".", "tests", "x" * 5000, "a\x00b.yaml",
                                                           "missing.yaml", "pyproject.toml", "README.md"])))
def test_any_task_name_loads_or_explains(key):
    try:
        load_task(key)
    except TaskError as e:
        assert "\n" not in str(e)
