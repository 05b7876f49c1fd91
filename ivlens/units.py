"""Units of work: THE loop of every resumable, shardable analysis.

An analysis splits its work into **units**: eval, patch and steer a chunk of one model's samples, ``trace
--compare`` one sample of one model, probe's IV collection one batch of instructions, the logit lens one
model. Each unit has a deterministic **key** (its file name in the run directory) and a **number**, 0, 1, …
in the order the unsharded run does them (model by model). :class:`UnitLoop` runs them and owns what every
analysis used to write for itself:

- **numbering**: :meth:`UnitLoop.number` numbers each model's units on from the last model's;
- **shard ownership**: a unit another shard owns (``owns(number)``, :meth:`ivlens.sharding.Shard.owns`) is
  skipped;
- **resume**: a unit whose result is on disk, complete (its store's ``has``), is skipped, so a killed run
  that is resumed ends with exactly the files of an uninterrupted one, none lost or computed twice;
- **atomic write**: a store writes a unit's result atomically (:mod:`ivlens.runs`), so a killed run never
  leaves a half-written unit file, and the file that marks a unit done is written last;
- **progress**: ``progress(unit, ran)`` after every unit, computed now (``ran``) or skipped;
- **concatenation**: :meth:`TablePieces.read` joins a table's pieces in the unsharded run's order.

Stores, by what a unit computes: :class:`TablePieces` (rows of one or more tables,
``<table>/shard-<key>.parquet``: eval, patch, steer, logit lens), :class:`RunParts` (JSON data plus tensors,
``<name>/part-<key>.json``: ``trace --compare``) and :class:`UnitFiles` (one file of bytes per unit: probe's
IV batches). ``ivlens merge`` (:mod:`ivlens.merge`) copies the shards' unit files into one run and resumes
it: every unit is then done, and the run ends as the unsharded one does.

>>> from ivlens.sharding import Shard
>>> loop = UnitLoop(TablePieces(None, ("rows",)), owns=Shard.parse("1/2").owns)
>>> units = loop.number([("c0", 10), ("c1", 11), ("c2", 12)])
>>> loop.run(units, lambda unit: {"rows": pd.DataFrame({"x": [unit.work]})})
1
>>> loop.store.read("rows").x.tolist()
[11]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import pandas as pd
import torch

from ivlens.runs import RunDir, atomic_write_bytes

W = TypeVar("W")  # what a unit works on: a chunk of sample ids, a sample, a batch of rows, a model's index
R = TypeVar("R")  # what a unit computes, as its store writes it
R_contra = TypeVar("R_contra", contravariant=True)


@dataclass(frozen=True)
class Unit(Generic[W]):
    """One unit of work: ``number`` (0-based, in the unsharded run's order), ``key`` (its file name in the run
    directory, deterministic) and ``work`` (what it computes on)."""

    number: int
    key: str
    work: W


class UnitStore(Protocol[R_contra]):
    """Where units' results go: ``has(key)``: the unit's result is on disk, complete; ``write(key, result)``:
    write it atomically, the file that ``has`` looks for last."""

    def has(self, key: str) -> bool: ...

    def write(self, key: str, result: R_contra) -> None: ...


def unit_key(model: int, kind: str | None = None, index: int | None = None) -> str:
    """THE key of a unit: ``m<model>`` and, for a unit within a model, ``-<kind><index>``, both zero-padded
    (``unit_key(2, "c", 7) == "m0002-c00007"``), so that file-name order is the unsharded run's order whatever
    the number of models, chunks or samples (:meth:`TablePieces.read` concatenates in that order)."""
    head = f"m{model:04d}"
    return head if kind is None else f"{head}-{kind}{index:05d}"


def _every_unit(number: int) -> bool:
    return True


class UnitLoop(Generic[R]):
    """Runs units of work into ``store``: those ``owns(number)`` keeps (default: every unit) whose result the
    store does not hold yet (see the module docstring). ``store`` is ``None`` for a loop that only numbers and
    owns a run's units, whose results go to the stores of its :meth:`on` loops."""

    def __init__(self, store: UnitStore[R] | None, *, owns: Callable[[int], bool] | None = None):
        self.store = store
        self._owns = owns or _every_unit
        self._numbers = itertools.count()

    def number(self, work: Iterable[tuple[str, W]]) -> list[Unit[W]]:
        """``(key, work)`` pairs in the unsharded run's order as units, numbered on from the last call's (so
        one loop numbers a run's models one after the other)."""
        return [Unit(next(self._numbers), key, w) for key, w in work]

    def on(self, store: UnitStore[R]) -> UnitLoop[R]:
        """A loop into ``store`` that shares this loop's ownership and numbering: its units number on from this
        loop's and later ones on from its (one run's units in stores of their own: probe's IV batches, a
        directory per model)."""
        loop = UnitLoop(store, owns=self._owns)
        loop._numbers = self._numbers
        return loop

    def owns(self, unit: Unit) -> bool:
        """Whether ``unit`` is this run's to compute (another shard's, when not)."""
        return self._owns(unit.number)

    def done(self, unit: Unit) -> bool:
        """Whether ``unit``'s result is on disk, complete (a resumed or merged run's)."""
        return self.store.has(unit.key)

    def pending(self, unit: Unit) -> bool:
        """Whether :meth:`run` computes ``unit``: owned, and not done."""
        return self.owns(unit) and not self.done(unit)

    def run(self, units: Iterable[Unit[W]], compute: Callable[[Unit[W]], R],
            progress: Callable[[Unit[W], bool], None] | None = None) -> int:
        """Compute every pending unit of ``units``, in order, and write its result to the store; after each
        unit (computed or skipped) call ``progress(unit, ran)``. Returns how many units were computed."""
        ran = 0
        for unit in units:
            now = self.pending(unit)
            if now:
                self.store.write(unit.key, compute(unit))
                ran += 1
            if progress is not None:
                progress(unit, now)
        return ran


class TablePieces:
    """Each unit's rows of ``tables``, as pieces ``<table>/shard-<key>.parquet`` of the run directory ``run``
    (:meth:`ivlens.runs.RunDir.write_unit_file`), or kept in memory when ``run`` is ``None``. A unit's result is
    ``{table: DataFrame}``; its pieces are written in the order of ``tables`` (the last table's piece last),
    and the unit is done when every table holds its piece."""

    def __init__(self, run: RunDir | None, tables: Sequence[str]):
        self.run = run
        self.tables = tuple(tables)
        self._memory: dict[str, list[pd.DataFrame]] = {t: [] for t in self.tables}

    def has(self, key: str) -> bool:
        return self.run is not None and all(self.run.has_unit_file(t, key) for t in self.tables)

    def write(self, key: str, result: Mapping[str, pd.DataFrame]) -> None:
        for table in self.tables:
            if self.run is None:
                self._memory[table].append(result[table])
            else:
                self.run.write_unit_file(table, key, result[table])

    def piece(self, table: str, key: str) -> pd.DataFrame:
        """Unit ``key``'s piece of ``table``, as written to the run directory (a resumed run's, where
        :meth:`has` says it is there)."""
        return pd.read_parquet(self.run.unit_file_path(table, key))

    def read(self, table: str) -> pd.DataFrame:
        """``table``'s pieces concatenated in the units' order: in memory, in the order they were computed; on
        disk, in the order of their keys (:meth:`ivlens.runs.RunDir.read_table`; the whole table when it was
        written already), which is the units' order where the keys number them zero-padded. Empty when no
        unit wrote one (a shard that owns none)."""
        if self.run is None:
            pieces = self._memory[table]
            return pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame()
        if not (self.run.path / table).is_dir():
            return pd.DataFrame()
        return self.run.read_table(table)


class RunParts:
    """Each unit's result as a part of the run directory ``run``: JSON data and named tensors,
    ``<name>/part-<key>.json`` and ``.safetensors`` (:meth:`ivlens.runs.RunDir.write_part`: the JSON, written
    last, marks the part done). A unit's result is ``(data, tensors)``."""

    def __init__(self, run: RunDir, name: str):
        self.run = run
        self.name = name

    def has(self, key: str) -> bool:
        return self.run.has_part(self.name, key)

    def write(self, key: str, result: tuple[dict, dict[str, torch.Tensor]]) -> None:
        self.run.write_part(self.name, key, *result)

    def read(self, key: str) -> tuple[dict, dict[str, torch.Tensor]]:
        """``(data, tensors)`` of the part of unit ``key``."""
        return self.run.read_part(self.name, key)


class UnitFiles:
    """Each unit's result as one file of bytes, ``directory / name.format(key=key)``, written atomically."""

    def __init__(self, directory: str | Path, name: str):
        self.directory = Path(directory)
        self.name = name

    def path(self, key: str) -> Path:
        return self.directory / self.name.format(key=key)

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def write(self, key: str, result: bytes) -> None:
        atomic_write_bytes(self.path(key), result)
