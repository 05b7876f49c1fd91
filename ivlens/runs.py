"""Run directories: ``runs/<date>-<command>-<name>/`` with ``manifest.json`` and Parquet results.

Every write is atomic (a temporary file in the same directory, then ``os.replace``), so a killed run never
leaves a half-written file. Long runs append **unit files** (``<table>/shard-<key>.parquet``: the file name keeps
the ``shard-`` of earlier versions, so their runs resume), one per unit of work with a deterministic key; on
``--resume`` a unit whose unit file exists is skipped, so the finished table holds exactly the rows of an
uninterrupted run, none lost or duplicated (:mod:`ivlens.units` runs that loop).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

import ivlens
from ivlens.errors import IvlensError

LIBRARIES = ("torch", "transformers", "nnsight", "trl", "scikit-learn", "numpy", "pandas", "pyarrow")

#: The format of the run directories this ivlens writes: ``run_format`` in every manifest (a manifest without it is
#: format 1). A renamed column, or a column whose values change meaning, is a new format; :data:`FORMAT_CHANGES`
#: says what each one changed and :func:`current_table` reads an older run's tables as this format's.
RUN_FORMAT = 2


class FormatChange(NamedTuple):
    """What a run format changed: in words; the columns (per analysis and table) the format before wrote with
    one less (so reading them adds 1); and the columns (per analysis and table) it wrote under another name
    (``{old: new}``, so reading them renames them)."""

    what: str
    one_less: dict[tuple[str, str], tuple[str, ...]]
    renamed: dict[tuple[str, str], dict[str, str]]


#: the top-1 token's IA (``ia_top1``; eval's ``ia`` is the generated answer's), as format 1 named it
_IA_TOP1 = {"ia": "ia_top1"}

#: Each format's change, by format number.
FORMAT_CHANGES: dict[int, FormatChange] = {
    2: FormatChange("eval's rank columns are 1-based, top-1 is rank 1; the patch, steer and organism tables' ia "
                    "(top-1 token in the label space) is ia_top1",
                    {("eval", "results"): ("first_token_rank", "first_token_rank_in_space", "answer_rank",
                                           "answer_rank_in_space")},
                    {("patch", "patch"): _IA_TOP1, ("patch", "baselines"): _IA_TOP1,
                     ("patch", "single_layer"): _IA_TOP1, ("patch", "strongest_sets"): _IA_TOP1,
                     ("steer", "steer"): _IA_TOP1, ("steer", "baselines"): _IA_TOP1,
                     ("steer", "dose_response"): {"ia": "ia_top1", "ia_sem": "ia_top1_sem"},
                     ("steer", "steer_vs_patch"): {"steer_ia": "steer_ia_top1", "patch_ia": "patch_ia_top1",
                                                   "set_ia": "set_ia_top1"},
                     ("organism", "iv_transfer"): _IA_TOP1}),
}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON (UTF-8, trailing newline) atomically: the one way ivlens writes a JSON file
    (manifests, cards, graphs, comparisons), so a killed process leaves the old file or the new one."""
    atomic_write_text(Path(path), json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def _plain(obj: Any) -> Any:
    """``obj`` with numpy scalars and arrays turned into Python numbers and lists (for JSON)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    return obj


def atomic_write_parquet(path: Path, df: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(ivlens.__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str | None]:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


#: how long a run directory's command and name parts, and a unit file's or part's key, may be in a file name
RUN_NAME_CHARS = 60


def slug(text: object, *, fallback: str = "x", max_len: int | None = None) -> str:
    """THE file-name form of a name, for every file and directory ivlens names after something the user chose
    (run directories, unit and part files, a model's files in a run, figures per vector).

    Each run of characters other than ASCII letters, digits and ``_ . -`` becomes one ``-``, and leading and
    trailing ``-`` go; then the result is cut to ``max_len`` characters (``None``: no cut) and, when nothing is
    left, ``fallback`` stands in. ``text`` is turned into a string with ``str`` (a swept value may be a number).

    >>> slug("probe:runs/x"), slug("/tmp/my model"), slug("0.5"), slug("é", fallback="run")
    ('probe-runs-x', 'tmp-my-model', '0.5', 'run')
    """
    out = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-")
    if max_len is not None:
        out = out[:max_len]
    return out or fallback


def _run_slug(text: str) -> str:
    return slug(text, fallback="run", max_len=RUN_NAME_CHARS)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | set):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    return repr(x)


def canonical_json(obj: Any) -> str:
    """The one canonical JSON text of ``obj``: sorted keys, no spaces, paths and tuples as strings and lists."""
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(obj: Any) -> str:
    """sha256 (hex) of :func:`canonical_json`: the content hash of specs and anything else ivlens compares."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def run_format(manifest: dict) -> int:
    """The format of the run whose manifest this is (1 when it records none: written before formats were)."""
    return int(manifest.get("run_format", 1))


class RunFormatError(IvlensError, ValueError):
    """A run directory of an older format where this ivlens can only read it (``--resume``, ``ivlens merge``)."""


def check_run_format(path: str | Path, manifest: dict, action: str, fix: str) -> None:
    """Refuse to continue or join an older format's run (``action`` names the option or command, ``fix`` what to
    do instead): its tables would mix two formats. Reading it (the report) goes through :func:`current_table`."""
    found = run_format(manifest)
    if found != RUN_FORMAT:
        changed = "; ".join(f"format {f}: {c.what}" for f, c in sorted(FORMAT_CHANGES.items()) if found < f)
        raise RunFormatError(f"{action} {path}: a run directory of run format {found}; this ivlens continues only "
                             f"format {RUN_FORMAT} runs ({changed or 'that one is newer'}): {fix}")


def current_table(manifest: dict, name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Table ``name`` of the run whose manifest is ``manifest``, as :data:`RUN_FORMAT` writes it: THE one place
    an older format's table is converted on read (format 1's 0-based eval ranks gain 1; its patch, steer and
    organism tables' ``ia`` is ``ia_top1``). ``df`` may hold any subset of the table's columns; a current run's
    table is returned as it is."""
    found, command = run_format(manifest), manifest.get("command")
    for fmt, change in sorted(FORMAT_CHANGES.items()):
        if found < fmt:
            cols = [c for c in change.one_less.get((command, name), ()) if c in df.columns]
            if cols:
                df = df.assign(**{c: df[c] + 1 for c in cols})
            renamed = {old: new for old, new in change.renamed.get((command, name), {}).items() if old in df.columns}
            if renamed:
                df = df.rename(columns=renamed)
    return df


def stored_columns(manifest: dict, name: str, columns: list[str] | None) -> list[str] | None:
    """The names under which the run whose manifest is ``manifest`` stored ``columns`` (as :data:`RUN_FORMAT`
    names them) of its table ``name``: what to read before :func:`current_table` renames them back (an older
    format may have written a column under another name). ``None`` (every column) stays ``None``."""
    if columns is None:
        return None
    found, command = run_format(manifest), manifest.get("command")
    for fmt, change in sorted(FORMAT_CHANGES.items(), reverse=True):
        if found < fmt:
            old_name = {new: old for old, new in change.renamed.get((command, name), {}).items()}
            columns = [old_name.get(c, c) for c in columns]
    return columns


class OutPathError(IvlensError, ValueError):
    """An ``--out`` path that cannot be what the command writes (a directory for runs and studies, an HTML
    file for reports)."""


def _file_on_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` (itself excluded) when that is not a directory, else None."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_out_dir(out: str | Path | None, option: str = "--out") -> None:
    """``out`` can be (or already is) a directory: not an existing file, nor a path through one. Called before
    any model loads, so a wrong ``--out`` costs nothing."""
    if out is None:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OutPathError(f"{option} {out} is an existing file, not a directory; give the path of a new "
                           "directory (a run directory holds a manifest, tables and figures)")
    blocker = _file_on_the_way(path)
    if blocker is not None:
        raise OutPathError(f"{option} {out}: {blocker} is a file, so no directory can be made inside it; give the "
                           "path of a new directory")


def check_out_file(out: str | Path | None, option: str = "--out") -> None:
    """``out`` can be written as a file: not an existing directory, nor a path through a file."""
    if out is None:
        return
    path = Path(out)
    if path.is_dir():
        raise OutPathError(f"{option} {out} is an existing directory, not a file; give the path of the file to "
                           f"write (e.g. {path / 'report.html'})")
    blocker = _file_on_the_way(path)
    if blocker is not None:
        raise OutPathError(f"{option} {out}: {blocker} is a file, so nothing can be written inside it; give "
                           "another path")


@dataclass
class RunDir:
    """A run directory and its manifest. Create with :meth:`create`, reopen with :meth:`open`."""

    path: Path
    manifest: dict = field(default_factory=dict)
    _t0: float = field(default_factory=time.perf_counter, repr=False)

    @classmethod
    def create(cls, command: str, name: str, *, out: str | Path | None = None, args: dict | None = None,
               models: list[dict] | None = None, task: str | None = None, seed: int | None = None,
               root: str | Path = "runs", spec: dict | None = None, spec_hash: str | None = None) -> RunDir:
        """Make ``<root>/<date>-<command>-<name>/`` (or ``out``) and write its manifest (with the run's spec and
        its content hash when given: see :mod:`ivlens.specs`)."""
        if out is None:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            path = Path(root) / f"{stamp}-{_run_slug(command)}-{_run_slug(name)}"
            n = 1
            while path.exists():
                n += 1
                path = Path(root) / f"{stamp}-{_run_slug(command)}-{_run_slug(name)}-{n}"
        else:
            check_out_dir(out)
            path = Path(out)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutPathError(f"cannot make the run directory {path} ({e.strerror or e}); give --out a directory "
                               "you can write") from None
        manifest = {
            "run_format": RUN_FORMAT,
            "ivlens_version": ivlens.__version__,
            "git_commit": git_commit(),
            "command": command,
            "name": name,
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "args": _jsonable(args or {}),
            "models": _jsonable(models or []),
            "task": task,
            "seed": seed,
            **({"spec": _jsonable(spec), "spec_hash": spec_hash} if spec is not None else {}),
            "libraries": library_versions(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "status": "running",
        }
        run = cls(path, manifest)
        run.write_manifest()
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """Reopen an existing run (for ``--resume``)."""
        path = Path(path)
        mf = path / "manifest.json"
        if not mf.exists():
            raise FileNotFoundError(f"{path}: no manifest.json; --resume needs the directory of an earlier run")
        return cls(path, json.loads(mf.read_text()))

    @classmethod
    def resume(cls, path: str | Path, option: str = "--resume") -> RunDir:
        """Reopen an existing run to continue it: one of :data:`RUN_FORMAT` only (else :class:`RunFormatError`)."""
        run = cls.open(path)
        check_run_format(path, run.manifest, option, "rerun into a new --out directory")
        return run

    def write_manifest(self) -> None:
        atomic_write_json(self.path / "manifest.json", self.manifest)

    def finish(self, **extra: Any) -> None:
        self.end("finished", **extra)

    def end(self, status: str, **extra: Any) -> None:
        """Record ``status`` (``finished``; ``shard`` for one shard of a sweep), ``extra`` and the wall time."""
        self.manifest.update(_jsonable(extra))
        self.manifest["status"] = status
        self.manifest["wall_seconds"] = round(self.manifest.get("wall_seconds", 0) + time.perf_counter() - self._t0, 3)
        self.write_manifest()

    # ------------------------------------------------------------------ tables
    def write_table(self, name: str, df: pd.DataFrame) -> Path:
        """Write ``<name>.parquet`` atomically."""
        p = self.path / f"{name}.parquet"
        atomic_write_parquet(p, df)
        return p

    def read_table(self, name: str) -> pd.DataFrame:
        """A table written whole or as unit files (concatenated in key order), as :data:`RUN_FORMAT` writes it
        (:func:`current_table`)."""
        whole = self.path / f"{name}.parquet"
        if whole.exists():
            return current_table(self.manifest, name, pd.read_parquet(whole))
        unit_files = sorted((self.path / name).glob("shard-*.parquet"))
        if not unit_files:
            raise FileNotFoundError(f"{self.path}: no table {name!r}")
        return current_table(self.manifest, name, pd.concat([pd.read_parquet(f) for f in unit_files],
                                                            ignore_index=True))

    def unit_file_path(self, table: str, key: str) -> Path:
        """The unit file of ``table`` for the unit of work ``key`` (``<table>/shard-<key>.parquet``)."""
        return self.path / table / f"shard-{_run_slug(key)}.parquet"

    def has_unit_file(self, table: str, key: str) -> bool:
        return self.unit_file_path(table, key).exists()

    def write_unit_file(self, table: str, key: str, df: pd.DataFrame) -> Path:
        """Write one unit of work's rows atomically; ``key`` must be deterministic for that unit."""
        p = self.unit_file_path(table, key)
        atomic_write_parquet(p, df)
        return p

    def part_path(self, name: str, key: str) -> Path:
        """The JSON file of a part (its tensors sit beside it, ``.safetensors``); it is written last."""
        return self.path / name / f"part-{_run_slug(key)}.json"

    def has_part(self, name: str, key: str) -> bool:
        return self.part_path(name, key).exists()

    def write_part(self, name: str, key: str, data: dict, tensors: dict[str, torch.Tensor]) -> Path:
        """Write one unit of work's result that is not one table (a unit of ``trace --compare``: graph
        comparisons, rows and head activity) as JSON ``data`` plus named ``tensors`` (safetensors), never a
        pickle: a run directory someone hands over (``--resume``, ``ivlens merge``) cannot run code. Both files
        are written atomically, the JSON last, so its presence marks the part done."""
        from safetensors.torch import save_file

        p = self.part_path(name, key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.stem}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
            os.replace(tmp, p.with_suffix(".safetensors"))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        atomic_write_json(p, _plain(data), indent=None)
        return p

    def read_part(self, name: str, key: str) -> tuple[dict, dict[str, torch.Tensor]]:
        """``(data, tensors)`` of a part written by :meth:`write_part`."""
        from safetensors.torch import load_file

        p = self.part_path(name, key)
        return json.loads(p.read_text()), load_file(p.with_suffix(".safetensors"))

    def figure_path(self, name: str) -> Path:
        (self.path / "figures").mkdir(exist_ok=True)
        return self.path / "figures" / name
