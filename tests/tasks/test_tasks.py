"""Built-in tasks, user tasks (CSV/JSONL + YAML) and every validation error."""

from __future__ import annotations

import textwrap

import pytest

from ivlens.tasks import TaskError, load_task
from ivlens.tasks.registry import builtin_names
from ivlens.tasks.selection import select_samples
from ivlens.tasks.validate import check_task, warn_first_token_clashes

EXPECTED = {
    "adjectives": (139, ["adj_comp", "adj_ant"]),
    "animals": (193, ["anim_color", "can_fly"]),
    "metaphor_boolean": (680, ["metaphor_boolean"]),
    "object_counting": (1000, ["object_counting"]),
    "implicatures": (492, ["implicatures"]),
    "snarks": (181, ["snarks"]),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_builtin_tasks_load(name):
    t = load_task(name)
    n, subtasks = EXPECTED[name]
    assert len(t.samples) == n and t.subtask_names == subtasks
    for st in t.subtasks.values():
        assert st.instruction and len(st.rephrasings) == 200 and st.label_space
        for s in t.samples:
            assert s.answers[st.name], s
            assert any(a in st.label_space for a in s.answers[st.name]) or name == "adjectives"
    assert set(builtin_names()) == set(EXPECTED)


def test_paper_instructions_and_labels():
    adj = load_task("adjectives")
    assert adj.subtasks["adj_ant"].instruction == "Given an adjective, state its antonym."
    assert adj.samples[0].query == "big" and adj.samples[0].answers == {"adj_comp": ("bigger",), "adj_ant": ("small",)}
    anim = load_task("animals")
    assert set(anim.subtasks["can_fly"].label_space) == {"yes", "no"}
    assert "tan" in anim.subtasks["anim_color"].label_space
    oc = load_task("object_counting")
    assert oc.samples[0].answers["object_counting"] == ("3", "three")
    assert load_task("snarks").samples[0].answers["snarks"][0] == "B"


def test_duplicate_queries_are_merged_with_all_answers_and_a_warning():
    adj = load_task("adjectives")
    by_query = {s.query: s for s in adj.samples}
    assert by_query["short"].answers["adj_ant"] == ("long", "tall")
    assert by_query["safe"].answers["adj_ant"] == ("dangerous", "unsafe")
    assert by_query["quiet"].answers["adj_ant"] == ("loud", "noisy")
    assert by_query["short"].rows == (16, 78)
    assert len(adj.warnings) == 3 and all("every listed answer is accepted" in w for w in adj.warnings)


def test_sample_selection_is_seeded_and_deterministic():
    t = load_task("animals")
    a, b = select_samples(t, 20, seed=3), select_samples(t, 20, seed=3)
    assert [s.index for s in a] == [s.index for s in b] and len(a) == 20
    assert [s.index for s in a] != [s.index for s in select_samples(t, 20, seed=4)]
    assert [s.index for s in a] == sorted(s.index for s in a)
    assert len(select_samples(t, None)) == 193
    sub = select_samples(t, None, queries=["bear", "crow"])
    assert [s.query for s in sub] == ["bear", "crow"]


def _write_task(tmp_path, csv_text: str, spec: str, name="t.csv"):
    (tmp_path / name).write_text(textwrap.dedent(csv_text).lstrip())
    (tmp_path / "r.csv").write_text('index,instruction\n0,"Give the opposite."\n1,Name the antonym.\n')
    p = tmp_path / "spec.yaml"
    p.write_text(textwrap.dedent(spec).lstrip())
    return p


SPEC = """
name: mytask
data: t.csv
field: Word
subtasks:
  comp:
    instruction: Give the comparative.
  ant:
    instruction: Give the antonym.
    rephrasings: r.csv
"""


def test_user_task_from_csv_and_yaml(tmp_path):
    p = _write_task(tmp_path, """
        query,comp,ant
        big,bigger,small
        hot,hotter,cold
    """, SPEC)
    t = load_task(str(p))
    assert t.name == "mytask" and t.field == "Word" and len(t.samples) == 2
    assert t.subtasks["ant"].rephrasings == ("Give the opposite.", "Name the antonym.")
    assert t.subtasks["comp"].label_space == ("bigger", "hotter")


def test_user_task_from_jsonl(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"query": "big", "comp": "bigger", "ant": "small"}\n'
                                      '{"query": "hot", "comp": "hotter", "ant": "cold"}\n')
    p = tmp_path / "spec.yaml"
    p.write_text(SPEC.replace("t.csv", "t.jsonl").replace("    rephrasings: r.csv\n", ""))
    t = load_task(p)
    assert [s.query for s in t.samples] == ["big", "hot"]


@pytest.mark.parametrize(("csv_text", "needle"), [
    ("query,comp\nbig,bigger\n", "missing column(s) ['ant']"),
    ("query,comp,ant,extra\nbig,bigger,small,x\n", "unexpected column(s) ['extra']"),
    ("query,comp,ant\nbig,bigger,small\nhot,,cold\n", "row 2: empty cell in column 'comp'"),
    ("query,comp,ant\nbig,bigger,small,oops\n", "row 1: more cells than columns"),
])
def test_file_errors_name_file_row_and_fix(tmp_path, csv_text, needle):
    p = _write_task(tmp_path, csv_text, SPEC)
    with pytest.raises(TaskError) as e:
        load_task(p)
    assert needle in str(e.value) and "t.csv" in str(e.value)


def test_subtask_without_instruction(tmp_path):
    p = _write_task(tmp_path, "query,comp,ant\nbig,bigger,small\n",
                    SPEC.replace("    instruction: Give the comparative.\n", "    rephrasings: r.csv\n"))
    with pytest.raises(TaskError) as e:
        load_task(p)
    assert "spec.yaml" in str(e.value) and "subtasks.comp.instruction" in str(e.value)
    assert "add `instruction: <text>`" in str(e.value)


def test_unknown_task_and_missing_file(tmp_path):
    with pytest.raises(TaskError, match="built-in tasks are"):
        load_task("no_such_task")
    p = tmp_path / "spec.yaml"
    p.write_text(SPEC.replace("t.csv", "missing.csv"))
    with pytest.raises(TaskError, match="missing.csv: file not found"):
        load_task(p)


def test_tokenizer_checks(tmp_path, tok):
    # 'better' vs 'best...' share a first token with this tokenizer? build an explicit clash instead:
    p = _write_task(tmp_path, """
        query,comp,ant
        big,bigger,bigger
        good,better,bad
    """, SPEC.replace("    rephrasings: r.csv\n", "    label_space: [bigger, biggest, bad]\n"))
    t = load_task(p)
    issues = check_task(t, tok, max_length=8)
    errors = [i for i in issues if i.severity == "error"]
    same_first = [i for i in errors if "start with the same token" in i.message]
    assert same_first and same_first[0].row == 1 and "t.csv" in str(same_first[0])
    too_long = [i for i in errors if "over the model's context of 8" in i.message]
    assert too_long and "shorten" in too_long[0].fix
    clash = [i for i in issues if i.severity == "warning" and "share their first token" in i.message]
    assert clash and "bigger" in clash[0].message and "biggest" in clash[0].message


def test_clash_warnings_once_per_task_and_subtask_of_a_run(tok):
    """A run passes one ``seen`` set to every model's call: the second model (same tokenizer) adds no warning, a new
    subtask does; ``--score answer`` never warns."""
    t = load_task("adjectives")
    seen: set[tuple[str, str]] = set()
    first = warn_first_token_clashes(tok, t, ["adj_comp"], "raw", "first-token", seen=seen)
    assert len(first) == 1 and "'adj_comp'" in first[0] and seen == {("adjectives", "adj_comp")}
    assert warn_first_token_clashes(tok, t, ["adj_comp"], "raw", "first-token", seen=seen) == []
    again = warn_first_token_clashes(tok, t, ["adj_comp", "adj_ant"], "raw", "first-token", seen=seen)
    assert len(again) == 1 and "'adj_ant'" in again[0]
    assert warn_first_token_clashes(tok, t, ["adj_comp"], "raw", "answer") == []
    assert len(warn_first_token_clashes(tok, t, ["adj_comp"], "raw", "first-token")) == 1  # no run: always
