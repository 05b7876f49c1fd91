"""The organism card (``card.json``): how an organism was made and what it measured.

Keys: ``version, variant, size, seed, made_how`` (prose), ``model`` (shape, parameters), ``data`` (sizes),
``split`` (per task: ``train`` / ``heldout`` queries; per subtask: held-out rephrasings), ``stages``
(per stage: steps, losses, seconds, weight hash), ``measured`` (per stage: see
:func:`ivlens.organism.measure.measure_stage`), ``acceptance`` (the issue's checks, each with its figure),
``timing`` (seconds per stage and in total), ``environment``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ivlens.runs import atomic_write_json

CARD_NAME = "card.json"


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over ``name, dtype, shape, bytes`` of every state-dict tensor in name order (independent of
    the file format's metadata)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_card(directory: Path, card: dict) -> Path:
    path = Path(directory) / CARD_NAME
    atomic_write_json(path, card)
    return path


def read_card(model_dir: str | Path) -> dict:
    """The card of an organism; ``model_dir`` may be the build directory or one stage directory in it."""
    d = Path(model_dir)
    for candidate in (d / CARD_NAME, d.parent / CARD_NAME):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    raise FileNotFoundError(f"no {CARD_NAME} in {d} or {d.parent}: not an ivlens organism build")


def organism_split(model_dir: str | Path) -> dict[str, dict[str, list[str]]]:
    """``{task_name: {"train": [queries], "heldout": [queries]}}`` recorded in the organism's card.

    Held-out queries' facts were seen only in pretraining (never in SFT or DPO).
    """
    split = read_card(model_dir)["split"]
    return {task: {"train": list(s["train"]), "heldout": list(s["heldout"])} for task, s in split.items()}


def iv_transfer_table(card: dict):
    """The card's single-layer IV transfer curves as one long table: stage, task, subtask, target, position,
    layer, ia, exact, flip, n_outside (one row per point of :func:`ivlens.organism.measure.measure_stage`'s
    curves), for reports that read tables rather than the card's nested JSON."""
    import pandas as pd

    rows = []
    for stage, tasks in (card.get("measured") or {}).items():
        for task, m in tasks.items():
            for sub, res in (m.get("iv") or {}).get("subtasks", {}).items():
                for key, points in res.get("curves", {}).items():
                    target, _, position = key.partition("/")
                    rows += [{"stage": stage, "task": task, "subtask": sub, "target": target, "position": position,
                              **{k: p.get(k) for k in ("layer", "ia", "exact", "flip", "n_outside")}}
                             for p in points]
    return pd.DataFrame(rows, columns=["stage", "task", "subtask", "target", "position", "layer", "ia", "exact",
                                       "flip", "n_outside"])


def write_card_run(run, card: dict) -> None:
    """Put ``card`` (``card.json``) and its IV-transfer curves (``iv_transfer.parquet``) into the run directory
    ``run`` (a :class:`ivlens.runs.RunDir`), where the report reads the organism like every other analysis."""
    from ivlens.runs import atomic_write_text

    atomic_write_text(run.path / CARD_NAME, json.dumps(card, indent=2) + "\n")
    run.write_table("iv_transfer", iv_transfer_table(card))
