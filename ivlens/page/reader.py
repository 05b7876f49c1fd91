"""Read finished run directories for the report: manifests, Parquet tables and JSON, nothing else.

A *study* is any directory: a single analysis's run directory (it holds ``manifest.json``) or a parent that
holds several (the main job's results directory, ``ivlens run``'s study directory). :func:`read_study` finds
every run below it; the report asks each :class:`Run` for its tables by name and never builds paths itself.

>>> study = read_study("runs/organism")
>>> [r.rel for r in study.of("patch")]
['patch/adjectives-bare', 'patch/adjectives-formatted']
>>> study.of("patch")[0].table("single_layer").head()
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from ivlens.runs import current_table, stored_columns

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
#: Folders inside a run that never hold another run (IV stores, figures, tables' unit files are skipped when walking).
_NOT_RUNS = {"ivs", "figures", "__pycache__"}


@dataclass(frozen=True)
class Run:
    """One run directory: its manifest and its tables (``<name>.parquet`` or unit files ``<name>/shard-*.parquet``).

    ``rel`` is the run's path relative to the study root (``"."`` for the root itself).
    """

    path: Path
    rel: str
    manifest: dict = field(hash=False, compare=False)

    @property
    def command(self) -> str:
        return str(self.manifest.get("command", "?"))

    @property
    def finished(self) -> bool:
        return self.manifest.get("status") == "finished"

    @property
    def models(self) -> list[dict]:
        return list(self.manifest.get("models") or [])

    @property
    def model_names(self) -> list[str]:
        return [str(m.get("name")) for m in self.models]

    @property
    def args(self) -> dict:
        return dict(self.manifest.get("args") or {})

    def table_path(self, name: str) -> Path | None:
        """``<name>.parquet``, else the folder of its unit files, else None."""
        whole = self.path / f"{name}.parquet"
        if whole.is_file():
            return whole
        unit_files = self.path / name
        if unit_files.is_dir() and any(unit_files.glob("shard-*.parquet")):
            return unit_files
        return None

    def has(self, name: str) -> bool:
        return self.table_path(name) is not None

    def table(self, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        """The table ``name`` (unit files concatenated in key order), as this ivlens's run format writes it (an older
        run's is converted: :func:`ivlens.runs.current_table`); ``columns`` reads only those."""
        p = self.table_path(name)
        if p is None:
            raise FileNotFoundError(f"{self.path}: no table {name!r}")
        columns = stored_columns(self.manifest, name, columns)
        if p.is_file():
            return current_table(self.manifest, name, pd.read_parquet(p, columns=columns))
        return current_table(self.manifest, name, pd.concat(
            [pd.read_parquet(s, columns=columns) for s in sorted(p.glob("shard-*.parquet"))], ignore_index=True))

    def names(self, suffix: str) -> list[str]:
        """Names of the run's own files ending in ``suffix`` (e.g. ``.paths.json``), without it, sorted."""
        return sorted(p.name[: -len(suffix)] for p in self.path.glob(f"*{suffix}") if p.is_file())

    def json(self, name: str) -> dict | list | None:
        """``<name>.json`` parsed, or None when absent."""
        p = self.path / f"{name}.json"
        return json.loads(p.read_text()) if p.is_file() else None


@dataclass
class Study:
    """Every run found under ``root``, in path order, and the study-level files."""

    root: Path
    runs: list[Run]

    def of(self, command: str, finished: bool = True) -> list[Run]:
        """The runs of one analysis (``eval``, ``patch``, ``probe``, ``trace``, ``organism``)."""
        return [r for r in self.runs if r.command == command and (r.finished or not finished)]

    @property
    def unfinished(self) -> list[Run]:
        return [r for r in self.runs if not r.finished]

    @cached_property
    def models(self) -> list[dict]:
        """Every model named in a manifest, first description per (name, weight hash), in order of appearance."""
        seen: dict[tuple, dict] = {}
        for r in self.runs:
            for m in r.models:
                seen.setdefault((m.get("name"), m.get("weight_hash")), m)
        return list(seen.values())

    @cached_property
    def model_order(self) -> list[str]:
        """Model names in the order the runs list them (base / SFT / DPO stay in that order)."""
        return list(dict.fromkeys(str(m.get("name")) for m in self.models))

    def text(self, name: str) -> str | None:
        p = self.root / name
        return p.read_text() if p.is_file() else None


def read_study(root: str | Path) -> Study:
    """Find every run directory (a folder with ``manifest.json``) at or below ``root``."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory; give a run directory or a study directory")
    runs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _NOT_RUNS and not d.startswith("."))
        if MANIFEST in filenames:
            d = Path(dirpath)
            try:
                manifest = json.loads((d / MANIFEST).read_text())
            except (OSError, json.JSONDecodeError) as e:
                log.warning("%s: unreadable manifest (%s); skipped", d, e)
                continue
            runs.append(Run(d, os.path.relpath(d, root), manifest))
            # a run's own tables' unit files are folders of shard-*.parquet: never runs
            dirnames[:] = [x for x in dirnames if not any((d / x).glob("shard-*.parquet"))]
    if not runs:
        raise FileNotFoundError(f"{root}: no run directory (no {MANIFEST}) here or below")
    return Study(root, runs)
