"""The organism card (``card.json``): how an organism was made and what it measured.

Keys: ``version, variant, size, seed, made_how`` (prose), ``model`` (shape, parameters), ``data`` (sizes),
``split`` (per task: ``train`` / ``heldout`` queries; per subtask: held-out rephrasings), ``stages``
(per stage: steps, losses, seconds, ``weights_sha256``: :func:`ivlens.models.load.weight_hash` of the stage's
directory, the value a run's manifest records for that checkpoint; cards of builds before that record a hash of
the state dict instead, 64 hex digits, which is only read), ``measured`` (per stage: see
:func:`ivlens.organism.measure.measure_stage`), ``acceptance`` (the issue's checks, each with its figure),
``timing`` (seconds per stage and in total), ``environment``.

Cards of earlier builds named the IV-transfer figures' ``ia_top1`` (the share of queries whose top-1 token lies in
the label space) ``ia``, and the best patch's ``unpatched_ia_top1`` ``unpatched_ia``: :func:`current_card`, which
every reader goes through (:func:`read_card`), renames them, so an organism built then keeps working.
"""

from __future__ import annotations

import json
from pathlib import Path

from ivlens.runs import atomic_write_json

CARD_NAME = "card.json"

#: keys of the IV-transfer figures that cards of earlier builds wrote under another name
RENAMED_KEYS = {"ia": "ia_top1", "unpatched_ia": "unpatched_ia_top1"}


def _renamed(d: dict) -> dict:
    """``d`` with the keys of :data:`RENAMED_KEYS` renamed where they stand (the order kept), the others as they
    are."""
    return {RENAMED_KEYS.get(k, k): v for k, v in d.items()}


def current_card(card: dict) -> dict:
    """``card`` as this ivlens writes it: THE one place a card of an earlier build is converted on read (its
    IV-transfer ``ia`` and ``unpatched_ia`` become ``ia_top1`` and ``unpatched_ia_top1``, in ``measured`` and in
    the acceptance checks' values; nothing else changes). A current card comes back equal; ``card`` itself is not
    changed."""
    out = dict(card)
    if card.get("measured"):
        out["measured"] = {stage: {task: _current_measure(m) for task, m in tasks.items()}
                           for stage, tasks in card["measured"].items()}
    if card.get("acceptance"):
        out["acceptance"] = {name: c | {"value": _renamed(c["value"])}
                             if isinstance(c, dict) and isinstance(c.get("value"), dict) else c
                             for name, c in card["acceptance"].items()}
    return out


def _current_measure(m: dict) -> dict:
    """One stage's figures of one task with the IV-transfer keys renamed (see :func:`current_card`)."""
    iv = m.get("iv")
    if not isinstance(iv, dict) or "subtasks" not in iv:
        return m
    renamed = {"curves": lambda curves: {key: [_renamed(p) for p in points] for key, points in curves.items()},
               "unpatched": lambda styles: {style: _renamed(u) for style, u in styles.items()}}
    subtasks = {sub: res | {k: rename(res[k]) for k, rename in renamed.items() if k in res}
                for sub, res in iv["subtasks"].items()}
    return m | {"iv": iv | {"subtasks": subtasks}}


def write_card(directory: Path, card: dict) -> Path:
    path = Path(directory) / CARD_NAME
    atomic_write_json(path, card)
    return path


def read_card(model_dir: str | Path) -> dict:
    """The card of an organism, as this ivlens writes it (:func:`current_card`); ``model_dir`` may be the build
    directory or one stage directory in it."""
    d = Path(model_dir)
    for candidate in (d / CARD_NAME, d.parent / CARD_NAME):
        if candidate.is_file():
            return current_card(json.loads(candidate.read_text()))
    raise FileNotFoundError(f"no {CARD_NAME} in {d} or {d.parent}: not an ivlens organism build")


def organism_split(model_dir: str | Path) -> dict[str, dict[str, list[str]]]:
    """``{task_name: {"train": [queries], "heldout": [queries]}}`` recorded in the organism's card.

    Held-out queries' facts were seen only in pretraining (never in SFT or DPO).
    """
    split = read_card(model_dir)["split"]
    return {task: {"train": list(s["train"]), "heldout": list(s["heldout"])} for task, s in split.items()}


def failing_checks(card: dict) -> list[str]:
    """One line per acceptance check the card records as failing (empty when all pass or none were measured), e.g.
    ``sft/adjectives/adj_ant/acc_train: 0.938, needs 0.95 (short by 0.012)``; ``card`` may be an earlier build's
    (:func:`current_card`)."""
    lines = []
    for name, c in (current_card(card).get("acceptance") or {}).items():
        if name == "all_pass" or c.get("pass", True):
            continue
        value, need = c["value"], c["threshold"]
        if isinstance(value, dict) and "flip" in value:  # IV transfer: the best single-layer patch
            shown = (f"best patch {value['subtask']} {value['target']} layer {value['layer']}: flip {value['flip']:.2f}, "
                     f"ia_top1 {value['ia_top1']:.2f}, exact {value['exact']:.2f}")
            need = f"flip >= 0.5, ia_top1 >= 0.5, exact >= {value['exact_needed']:.2f}"
        elif isinstance(value, dict):
            shown = ", ".join(f"{k} {v:.3f}" for k, v in value.items())
        else:
            shown = "none measured" if value is None else f"{value:.3f}"
        short = f" (short by {-c['margin']:.3f})" if "margin" in c else ""
        lines.append(f"{name}: {shown}; needs {need}{short}")
    return lines


def study_organism_warnings(study_dir: str | Path) -> list[str]:
    """One line per failing acceptance check of every organism a study (or run) directory holds a card of: the
    organism step's run directory, where :func:`write_card_run` puts it."""
    lines = []
    for path in sorted(Path(study_dir).glob(f"**/{CARD_NAME}")):
        card = current_card(json.loads(path.read_text()))
        lines += [f"organism {card.get('variant', '?')} {card.get('version', '')} (seed {card.get('seed')}) fails "
                  f"its acceptance check {line}" for line in failing_checks(card)]
    return lines


def iv_transfer_table(card: dict):
    """The card's single-layer IV transfer curves as one long table: stage, task, subtask, target, position,
    layer, ia_top1, exact, flip, n_outside (one row per point of :func:`ivlens.organism.measure.measure_stage`'s
    curves), for reports that read tables rather than the card's nested JSON; ``card`` may be an earlier build's
    (:func:`current_card`)."""
    import pandas as pd

    rows = []
    for stage, tasks in (current_card(card).get("measured") or {}).items():
        for task, m in tasks.items():
            for sub, res in (m.get("iv") or {}).get("subtasks", {}).items():
                for key, points in res.get("curves", {}).items():
                    target, _, position = key.partition("/")
                    rows += [{"stage": stage, "task": task, "subtask": sub, "target": target, "position": position,
                              **{k: p.get(k) for k in ("layer", "ia_top1", "exact", "flip", "n_outside")}}
                             for p in points]
    return pd.DataFrame(rows, columns=["stage", "task", "subtask", "target", "position", "layer", "ia_top1", "exact",
                                       "flip", "n_outside"])


def write_card_run(run, card: dict) -> None:
    """Put ``card`` (``card.json``) and its IV-transfer curves (``iv_transfer.parquet``) into the run directory
    ``run`` (a :class:`ivlens.runs.RunDir`), where the report reads the organism like every other analysis."""
    from ivlens.runs import atomic_write_text

    atomic_write_text(run.path / CARD_NAME, json.dumps(card, indent=2) + "\n")
    run.write_table("iv_transfer", iv_transfer_table(card))
