"""The instruction sets that the probes compare: which instructions, with which class label and split.

Two ways of varying the instructions (``--varying``):

``instructions`` (default)
    Every subtask contributes its main instruction and its rephrasings (the built-in rephrasing files,
    200 per subtask, or a user CSV ``index,instruction``). The class is the subtask. The **held-out
    rephrasings** are, for a model organism, the phrasings its ``card.json`` says were kept out of training;
    otherwise the last quarter of each rephrasing file (the organisms' convention, so that every model is
    tested on the same phrasings). The main instruction is always a training phrasing.

``labels``
    Instructions that keep the task but change its **label space** (the answers it asks for), for the
    subtasks whose instruction names its label space. Each such subtask has a *family* of label-space
    variants (:data:`LABEL_FAMILIES`); every rephrasing is rewritten once per variant by substituting the
    words that name the labels (``'yes' or 'no'`` → ``'Y' or 'N'``), and a rephrasing that names no label
    gets the variant's format sentence appended (``Print Y for yes and N for no.``). So the variants of one
    rephrasing differ only in their label space. Defined for:

    ==================  ==========================================  =====================================
    subtask             label-space variants (slot 0 = the task's)  rewritten words
    ==================  ==========================================  =====================================
    can_fly             yes/no, Y/N, true/false, 1/0                ``yes``, ``no``
    implicatures        Y/N, T/F, 1/0                               ``Y``, ``N`` (capital, stand-alone)
    metaphor_boolean    Y/N, T/F, 1/0                               ``Y``, ``N``
    object_counting     digit, number word, Roman numeral           ``digit(s)``
    snarks              letter A/B, number 1/2                      ``A and B``, ``A or B``, ``letter(s)``
    ==================  ==========================================  =====================================

    adj_comp, adj_ant and anim_color answer in open vocabulary (a word, a colour), so their instructions
    do not name a label space and they are skipped (logged) in this mode. The class is still the subtask;
    the held-out evaluation is leave-one-variant-slot-out (train on the other label spaces, test on an
    unseen one), and a second probe predicts the variant slot within each subtask (is the label space
    itself linearly readable from the IV?).

Everything here is data: :func:`instruction_set` returns :class:`InstructionRow` s, no model involved.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ivlens.providers import read_model_card
from ivlens.specs import Varying
from ivlens.tasks.loading import read_rephrasings
from ivlens.tasks.registry import load_task
from ivlens.tasks.schema import Task, TaskError
from ivlens.tasks.selection import training_rephrasings

log = logging.getLogger(__name__)

#: which half of a subtask's rephrasings a row is (probe training or held-out evaluation); not a query split
RephrasingSplit = Literal["train", "heldout"]


@dataclass(frozen=True)
class InstructionRow:
    """One instruction to run: its class label (the subtask), where it came from, and its split.

    ``index`` is the row of the rephrasing file (−1 for the task's main instruction); ``variant`` /
    ``variant_slot`` name the label-space variant in ``labels`` mode (``""`` / 0 otherwise).
    """

    task: str
    subtask: str
    instruction: str
    source: str  # "main" | "rephrasing" | "user"
    index: int
    split: RephrasingSplit
    variant: str = ""
    variant_slot: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LabelVariant:
    """One label space: its name, how each matched label word is rewritten, and the fallback sentence."""

    name: str
    words: dict[str, str]  # lower-cased matched text -> replacement
    fallback: str


@dataclass(frozen=True)
class LabelFamily:
    """The label-space variants of one subtask; ``pattern`` finds the words that name the labels."""

    pattern: str
    flags: int
    variants: tuple[LabelVariant, ...]


def _yn(name: str, y: str, n: str) -> LabelVariant:
    return LabelVariant(name, {"y": y, "n": n}, f"Print {y} for yes and {n} for no.")


_YN_FAMILY = LabelFamily(r"\b(Y|N)\b", 0, (_yn("Y/N", "Y", "N"), _yn("T/F", "T", "F"), _yn("1/0", "1", "0")))

#: label-space variants of the subtasks whose instructions name their labels (see the module docstring)
LABEL_FAMILIES: dict[str, LabelFamily] = {
    "can_fly": LabelFamily(r"\b(yes|no)\b", re.IGNORECASE, (
        LabelVariant("yes/no", {"yes": "yes", "no": "no"}, "Print 'yes' or 'no'."),
        LabelVariant("Y/N", {"yes": "Y", "no": "N"}, "Print 'Y' or 'N'."),
        LabelVariant("true/false", {"yes": "true", "no": "false"}, "Print 'true' or 'false'."),
        LabelVariant("1/0", {"yes": "1", "no": "0"}, "Print '1' or '0'."),
    )),
    "implicatures": _YN_FAMILY,
    "metaphor_boolean": _YN_FAMILY,
    "object_counting": LabelFamily(r"\b(digits?)\b", re.IGNORECASE, (
        LabelVariant("digit", {"digit": "digit", "digits": "digits"}, "Print it as a digit."),
        LabelVariant("word", {"digit": "number word", "digits": "number words"}, "Print it as a number word."),
        LabelVariant("roman", {"digit": "Roman numeral", "digits": "Roman numerals"}, "Print it as a Roman numeral."),
    )),
    "snarks": LabelFamily(r"\b(A and B|A or B|letters?)\b", 0, (
        LabelVariant("A/B", {"a and b": "A and B", "a or b": "A or B", "letter": "letter", "letters": "letters"},
                     "Print A or B."),
        LabelVariant("1/2", {"a and b": "1 and 2", "a or b": "1 or 2", "letter": "number", "letters": "numbers"},
                     "Print 1 or 2."),
    )),
}


def rewrite_label_space(text: str, family: LabelFamily, variant: LabelVariant) -> str:
    """``text`` with its label words rewritten for ``variant``, or with the variant's fallback appended.

    >>> fam = LABEL_FAMILIES["can_fly"]
    >>> rewrite_label_space("Say 'yes' or 'no'.", fam, fam.variants[1])
    "Say 'Y' or 'N'."
    """
    def repl(m: re.Match) -> str:
        out = variant.words[m.group(0).lower()]
        # keep a capital first letter ("Digit" -> "Number word") unless the replacement is case-coded
        if m.group(0)[:1].isupper() and out[:1].islower() and family.flags & re.IGNORECASE:
            out = out[:1].upper() + out[1:]
        return out

    new, n = re.subn(family.pattern, repl, text, flags=family.flags)
    if n:
        return new
    sep = "" if text.endswith(" ") else " "
    return f"{text}{sep}{variant.fallback}"


def organism_heldout(model_path: str | Path | None) -> dict[str, set[str]] | None:
    """Held-out rephrasings recorded in a model organism's ``card.json``: ``{subtask: {instruction, ...}}``.

    The card sits in the stage directory or its parent (``ivlens.providers.read_model_card``). Recognised
    layouts, anywhere in the card: ``"heldout_rephrasings": {subtask: [...]}`` or
    ``"rephrasings": {subtask: {"heldout": [...]}}`` (merged over tasks). ``None`` when there is no card
    or it records no rephrasing split (the organisms' default split is then the same as ours: the last
    quarter of each file).
    """
    if model_path is None:
        return None
    try:
        card = read_model_card(model_path)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    found: dict[str, set[str]] = {}
    _collect_heldout(card, found)
    return found or None


def _collect_heldout(obj, found: dict[str, set[str]]) -> None:
    """Merge every per-subtask held-out rephrasing list found in a card (nested dicts) into ``found``."""
    if not isinstance(obj, dict):
        return
    for key in ("heldout_rephrasings", "held_out_rephrasings"):
        v = obj.get(key)
        if isinstance(v, dict):
            for sub, texts in v.items():
                if isinstance(texts, list):
                    found.setdefault(sub, set()).update(texts)
    v = obj.get("rephrasings")
    if isinstance(v, dict):
        for sub, x in v.items():
            if isinstance(x, dict) and isinstance(x.get("heldout", x.get("held_out")), list):
                found.setdefault(sub, set()).update(x.get("heldout", x.get("held_out")))
    for key, v in obj.items():
        if key not in ("heldout_rephrasings", "held_out_rephrasings", "rephrasings"):
            _collect_heldout(v, found)


def read_user_instructions(spec: str) -> tuple[str, Path]:
    """Parse ``NAME=PATH`` (a class name and an ``index,instruction`` CSV)."""
    name, sep, path = spec.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise TaskError(f"--instructions {spec!r}: expected NAME=PATH, e.g. my_task=my_rephrasings.csv")
    return name.strip(), Path(path.strip())


def instruction_set(tasks: list[str | Task], varying: Varying = "instructions",
                    user: dict[str, str | Path] | None = None,
                    heldout: dict[str, set[str]] | None = None,
                    max_per_subtask: int | None = None) -> list[InstructionRow]:
    """The instructions to probe, in a fixed order (task, subtask, variant, rephrasing).

    Args:
        tasks: built-in task names, YAML spec paths, or loaded :class:`Task` s.
        varying: ``instructions`` (rephrasings) or ``labels`` (label-space variants); module docstring.
        user: extra classes from user CSVs ``index,instruction``: ``{class_name: path}``; the last quarter
            of each file is held out.
        heldout: held-out phrasings per subtask (an organism's card); default: last quarter of each file.
        max_per_subtask: keep only the first N rephrasings of each file (and of each split, proportionally).

    Returns:
        rows, one per instruction (label = ``row.subtask``).
    """
    if varying not in ("instructions", "labels"):
        raise ValueError(f"unknown --varying {varying!r}; use 'instructions' or 'labels'")
    rows: list[InstructionRow] = []
    for t in tasks:
        task = t if isinstance(t, Task) else load_task(t)
        for name, sub in task.subtasks.items():
            reph = _limit(sub.rephrasings, max_per_subtask)
            held = heldout.get(name) if heldout else None
            if heldout and held is None:
                log.warning("the organism card lists no held-out rephrasings for %s; using the last quarter", name)
            splits = _splits(reph, sub.rephrasings, held)
            base = [(sub.instruction, "main", -1, "train")] + [
                (text, "rephrasing", i, s) for i, (text, s) in enumerate(zip(reph, splits, strict=True))]
            if varying == "instructions":
                rows += [InstructionRow(task.name, name, text, src, i, s) for text, src, i, s in base]
                continue
            family = LABEL_FAMILIES.get(name)
            if family is None:
                log.warning("--varying labels: %s answers in an open vocabulary (no label space in its "
                            "instruction); skipped", name)
                continue
            for slot, var in enumerate(family.variants):
                rows += [InstructionRow(task.name, name, rewrite_label_space(text, family, var), src, i, s,
                                        var.name, slot) for text, src, i, s in base]
    for cls, path in (user or {}).items():
        texts = _limit(read_rephrasings(Path(path)), max_per_subtask)
        splits = _splits(texts, texts, None)
        rows += [InstructionRow("user", cls, text, "user", i, s) for i, (text, s) in enumerate(zip(texts, splits, strict=True))]
    if not rows:
        raise TaskError("no instructions to probe: with --varying labels choose tasks that name their label "
                        f"space ({', '.join(LABEL_FAMILIES)})")
    return rows


def _limit(texts: tuple[str, ...], n: int | None) -> tuple[str, ...]:
    if n is None or n >= len(texts):
        return texts
    # keep the first n of the training part and the matching share of the held-out tail
    n_train = training_rephrasings(len(texts))
    k_train = training_rephrasings(n)
    return texts[:k_train] + texts[n_train:n_train + (n - k_train)]


def _splits(texts: tuple[str, ...], full: tuple[str, ...], held: set[str] | None) -> list[RephrasingSplit]:
    """Split of each text: in ``held`` if given, else by its position in the full file."""
    if held is not None:
        return ["heldout" if t in held else "train" for t in texts]
    n_train = training_rephrasings(len(full))
    position = {t: i for i, t in enumerate(full)}
    return ["heldout" if position.get(t, 0) >= n_train else "train" for t in texts]
