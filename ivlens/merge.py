"""``ivlens merge RUN... --out DIR``: one run from the shards of a sweep (``--shard i/n``, :mod:`ivlens.sharding`).

The shards must be runs of one spec (same analysis and spec hash; the shard is result-neutral) that together
cover ``0/n … n−1/n``. Their unit files (tables' pieces, IV batches, trace parts) are copied into ``DIR``, whose
manifest is the first shard's without the shard, and the run is then finished by its own ``run_<analysis>``
with ``resume``: every unit is on disk, so nothing is computed again, and the summary tables, figures and
manifest are the unsharded run's. (The models are loaded for that, as by any ``--resume``; no forward pass runs.)
"""

from __future__ import annotations

import filecmp
import shutil
from collections.abc import Sequence
from pathlib import Path

from ivlens.analyses import spec_from_manifest
from ivlens.errors import IvlensError
from ivlens.models.load import LoadedModel
from ivlens.runs import RunDir, check_out_dir, check_run_format
from ivlens.sharding import Shard
from ivlens.specs import Spec


class MergeError(IvlensError, ValueError):
    """Runs that are not the shards of one sweep."""


def shard_specs(runs: Sequence[str | Path]) -> tuple[Spec, list[RunDir]]:
    """The unsharded spec of ``runs`` and the runs, checked to be the complete shards of one spec."""
    if not runs:
        raise MergeError("give the run directories of the shards to merge")
    opened = [RunDir.open(r) for r in runs]
    for r in opened:  # the merged run is finished by --resume, which continues only this format's runs
        check_run_format(r.path, r.manifest, "ivlens merge:", "rerun its shard with this ivlens into a new --out "
                         "directory and merge those")
    specs = [spec_from_manifest(r.manifest) for r in opened]
    first = specs[0]
    for r, s in zip(opened, specs, strict=True):
        if getattr(s, "shard", None) is None or r.manifest.get("status") != "shard":
            raise MergeError(f"{r.path}: not a finished shard (status {r.manifest.get('status')!r}, shard "
                             f"{getattr(s, 'shard', None)!r}); run it with --shard i/n, or --resume it")
        if type(s) is not type(first) or s.hash() != first.hash():
            diffs = "; ".join(first.differences(s)) or f"{first.analysis} vs {s.analysis}"
            raise MergeError(f"{r.path} is a shard of another run than {opened[0].path}: {diffs}")
    shards = [Shard.parse(s.shard) for s in specs]
    n = shards[0].count
    have = sorted(sh.index for sh in shards)
    if any(sh.count != n for sh in shards) or have != list(range(n)):
        missing = sorted(set(range(n)) - set(have))
        raise MergeError(f"the shards do not cover 0/{n} … {n - 1}/{n} once each (given "
                         f"{', '.join(map(str, shards))}" + (f"; missing {', '.join(f'{i}/{n}' for i in missing)}"
                                                               if missing else "") + ")")
    return first.model_copy(update={"shard": None}), opened


def gather_units(runs: Sequence[RunDir], out: Path) -> int:
    """Copy every shard's files (not its manifest) into ``out``; a file two shards both hold (an IV store's
    labels and meta) must be identical. Returns the number of files copied."""
    copied = 0
    for run in runs:
        for src in sorted(p for p in run.path.rglob("*") if p.is_file() and p.name != "manifest.json"):
            dst = out / src.relative_to(run.path)
            if dst.exists():
                if not filecmp.cmp(src, dst, shallow=False):
                    raise MergeError(f"the shards disagree on {src.relative_to(run.path)} (collected with other "
                                     "settings, e.g. --batch-size chosen from each machine's memory: give one)")
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            copied += 1
    return copied


def merge_runs(runs: Sequence[str | Path], out: str | Path, *,
               models: Sequence[LoadedModel] | None = None, root: str | Path | None = None) -> Path:
    """Merge the shards ``runs`` into the run directory ``out`` and finish it (see the module docstring).
    ``models``: the spec's models, loaded (and named as in the shards); else they are loaded by name. ``root``:
    where the spec's relative run directories are read from (a study's directory for its steps; default: here)."""
    from ivlens.analyses import run_spec

    check_out_dir(out)
    spec, opened = shard_specs(runs)
    out = Path(out)
    if (out / "manifest.json").exists():
        raise MergeError(f"{out} already holds a run; merge into a new directory")
    out.mkdir(parents=True, exist_ok=True)
    gather_units(opened, out)
    merged = RunDir(out, dict(opened[0].manifest))
    merged.manifest.pop("shard", None)
    merged.manifest.update(spec=spec.model_dump(mode="json"), status="running", wall_seconds=round(
        sum(r.manifest.get("wall_seconds", 0) for r in opened), 3), merged_from=[str(r.path) for r in opened])
    merged.write_manifest()
    return run_spec(spec, models=models, resume=out, root=root)
