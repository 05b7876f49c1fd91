"""Built-in tasks: the paper's contrastive tasks and its four BIG-bench tasks, loaded offline from the
package's ``data/`` folder (see ``data/reference/README.md`` and ``data/bigbench/README.md`` for the
attributions: UKPLab ``arxiv2026-instruction-vectors`` and BIG-bench, both Apache-2.0).

``load_task(name_or_path)`` accepts a built-in name or the path of a user YAML spec.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .loading import build_samples, default_label_space, load_task_spec, read_rephrasings, read_rows
from .schema import Sample, Subtask, Task, TaskError

DATA = Path(__file__).parent / "data"
REFERENCE = DATA / "reference"
BIGBENCH = DATA / "bigbench"
REPHRASINGS = REFERENCE / "varied_instructions"

PAPER_ATTRIBUTION = "UKPLab arxiv2026-instruction-vectors (Bigoulaeva et al., 2026), Apache-2.0"
BIGBENCH_ATTRIBUTION = "BIG-bench (Srivastava et al., 2022), Apache-2.0; instruction from the paper"


@dataclass(frozen=True)
class _Contrastive:
    file: str
    field: str
    instructions: dict[str, str]
    description: str


CONTRASTIVE = {
    "adjectives": _Contrastive(
        "adjectives.csv", "Adjective",
        {"adj_comp": "Given an adjective, state its comparative form.",
         "adj_ant": "Given an adjective, state its antonym."},
        "Adjectives: comparative form vs antonym of the same adjective.",
    ),
    "animals": _Contrastive(
        "animals.csv", "Animal",
        {"anim_color": "Given an animal, state its most typical associated color.",
         "can_fly": "Given an animal, state whether or not it can fly. Print 'yes' or 'no'."},
        "Animals: typical colour vs whether it can fly.",
    ),
}

# The paper's anim_color label space (data/reference/README.md).
ANIMAL_COLORS = ("red", "orange", "yellow", "golden", "green", "blue", "purple", "pink", "brown", "black",
                 "white", "gray", "silver", "tan")


@dataclass(frozen=True)
class _BigBench:
    field: str
    instruction: str
    labels: dict[str, tuple[str, ...]]  # BIG-bench target -> accepted answers (first is primary)
    label_space: tuple[str, ...]
    description: str


_YN = {"yes": ("Y", "yes"), "no": ("N", "no")}
BIGBENCH_TASKS = {
    "implicatures": _BigBench(
        "Dialogue", "Predict whether Speaker 2's answer to Speaker 1 counts as a yes or as a no. Print Y for yes and N for no.",
        _YN, ("Y", "N", "yes", "no"), "BIG-bench implicatures: does the reply mean yes or no?"),
    "metaphor_boolean": _BigBench(
        "Sentences", "For a given metaphorical sentence, identify if the second sentence is the correct interpretation. "
        "Print Y for yes and N for no.",
        {"True": ("Y", "yes"), "False": ("N", "no")}, ("Y", "N", "yes", "no"),
        "BIG-bench metaphor_boolean: is the second sentence a correct paraphrase of the metaphor?"),
    "object_counting": _BigBench(
        "Sentence", "For the given sentence, count the number of objects listed and print it as a digit.",
        {}, tuple(str(i) for i in range(0, 26)), "BIG-bench object_counting: count the objects, answer a digit."),
    "snarks": _BigBench(
        "Statements", "Choose which of the two statements is sarcastic and print the corresponding letter:",
        {"(a)": ("A", "a", "(a)"), "(b)": ("B", "b", "(b)")}, ("A", "B", "a", "b", "(a)", "(b)"),
        "BIG-bench snarks: which statement is sarcastic?"),
}


def builtin_names() -> list[str]:
    return [*CONTRASTIVE, *BIGBENCH_TASKS]


def rephrasings_path(subtask: str) -> Path | None:
    p = REPHRASINGS / f"{subtask}_rephrased.csv"
    return p if p.exists() else None


def _rephrasings(subtask: str) -> tuple[str, ...]:
    p = rephrasings_path(subtask)
    return read_rephrasings(p) if p else ()


def _load_contrastive(name: str) -> Task:
    spec = CONTRASTIVE[name]
    path = REFERENCE / spec.file
    columns, rows = read_rows(path)
    samples, warnings = build_samples(path, columns, rows, list(spec.instructions))
    subtasks = {}
    for st, instr in spec.instructions.items():
        space = ANIMAL_COLORS if st == "anim_color" else default_label_space(samples, st)
        p = rephrasings_path(st)
        subtasks[st] = Subtask(st, instr, _rephrasings(st), space, str(p) if p else None)
    return Task(name, spec.field, subtasks, samples, str(path), spec.description, PAPER_ATTRIBUTION, warnings)


def _load_bigbench(name: str) -> Task:
    spec = BIGBENCH_TASKS[name]
    path = BIGBENCH / f"{name}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    samples = []
    for i, ex in enumerate(data["examples"]):
        if "target_scores" in ex:
            best = max(ex["target_scores"], key=ex["target_scores"].get)
            answers = spec.labels[best]
        else:  # object_counting: target ["three", "3"] -> digit first
            targets = list(ex["target"])
            answers = tuple(sorted(targets, key=lambda t: not t.isdigit()))
        samples.append(Sample(index=i, query=ex["input"].strip(), answers={name: tuple(answers)}, rows=(i + 1,)))
    p = rephrasings_path(name)
    subtask = Subtask(name, spec.instruction, _rephrasings(name), spec.label_space, str(p) if p else None)
    return Task(name, spec.field, {name: subtask}, tuple(samples), str(path), spec.description, BIGBENCH_ATTRIBUTION)


@cache
def _builtin(name: str) -> Task:
    return _load_contrastive(name) if name in CONTRASTIVE else _load_bigbench(name)


def _exists(key: str) -> bool:
    try:
        return Path(key).exists()
    except OSError:  # a name too long for a path
        return False


def load_task(name_or_path: str | Path) -> Task:
    """A built-in task by name (``adjectives``, ``animals``, ``metaphor_boolean``, ``object_counting``,
    ``implicatures``, ``snarks``) or a user task from a YAML spec path."""
    key = str(name_or_path)
    if key in CONTRASTIVE or key in BIGBENCH_TASKS:
        return _builtin(key)
    if key.endswith((".yaml", ".yml")) or _exists(key):
        return load_task_spec(key)
    raise TaskError(f"unknown task {key!r}: built-in tasks are {', '.join(builtin_names())}; "
                    "or pass the path of a YAML task spec (see `ivlens tasks show --help`)")
