"""Byte snapshot of every analysis's run tables on tiny models: run before and after a refactor that must not
change results, then compare.

    python scripts/table_snapshot.py save /tmp/before      # on the old tree
    python scripts/table_snapshot.py save /tmp/after       # on the new tree
    python scripts/table_snapshot.py compare /tmp/before /tmp/after

``save`` runs each analysis of the determinism test (``tests/test_determinism.py``, the same command lines and
seeds) on tiny random checkpoints of several families, plus the torch engine's ``--backend nnsight`` and the
``--remote`` programs run locally (:func:`ivlens.ndif.local_model`) for the patch sweep and IV collection, and
keeps every Parquet table and safetensors file (IV shards, steering vectors, probe weights) of each run.
``compare`` prints each file that differs or exists on one side only and exits 1 if any does.

Developer tool (reads nothing from ``/work/shared``); needs ``HF_HUB_OFFLINE=1`` and its own ``IVLENS_CACHE``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

KEEP = ("*.parquet", "*.safetensors")
FAMILIES = ("olmo2", "llama", "gpt2", "gemma2")


def _cli_runs(model: str) -> dict[str, list[str]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_determinism import ANALYSES  # the determinism test's command lines (and seeds)

    runs = {name: [*args, "--model", model] for name, args in ANALYSES.items() if name != "eval"}
    runs["patch-nnsight"] = [*runs["patch"], "--backend", "nnsight"]
    return runs


def _remote_programs(arch: str, out: Path) -> None:
    """The ``--remote`` programs on local weights: a patch sweep's tables and a probe IV collection's shards."""
    from ivlens.models.load import LoadedModel
    from ivlens.ndif import local_model
    from ivlens.patching.sweep import patch_sweep
    from ivlens.probing.collect import collect_ivs
    from ivlens.probing.instructions import instruction_set
    from ivlens.runs import atomic_write_parquet
    from ivlens.tasks import load_task
    from ivlens.testing.tiny import tiny_model, tiny_tokenizer

    lm = LoadedModel.wrap(tiny_model(arch, seed=0, n_layers=3, d_model=32), tiny_tokenizer(), f"tiny-{arch}")
    for name, m in (("torch", lm), ("nnsight", local_model(lm))):
        res = patch_sweep(m, "adjectives", "adj_ant", layers="single", positions="first,last", samples=2,
                          chunk_size=2)
        d = out / f"sweep-{name}"
        d.mkdir(parents=True)
        atomic_write_parquet(d / "rows.parquet", res.rows)
        atomic_write_parquet(d / "baselines.parquet", res.baselines)
        rows = instruction_set([load_task("adjectives")], max_per_subtask=3)
        collect_ivs(m, rows, out / f"ivs-{name}", batch_size=2)


def save(dest: Path) -> None:
    from typer.testing import CliRunner

    from ivlens.cli import app
    from ivlens.testing.tiny import save_tiny_checkpoint

    dest.mkdir(parents=True, exist_ok=False)
    tmp = Path(tempfile.gettempdir()) / "ivlens-table-snapshot"  # a fixed path: the model's name is its path
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for arch in FAMILIES:
            model = str(save_tiny_checkpoint(Path(tmp) / f"tiny-{arch}", arch, n_layers=3, d_model=32))
            for name, args in _cli_runs(model).items():
                run = Path(tmp) / arch / name
                r = CliRunner().invoke(app, [*args, "--out", str(run)])
                if r.exit_code != 0:
                    raise SystemExit(f"{arch} {name}: exit {r.exit_code}\n{r.output}")
                _keep(run, dest / arch / name)
            _remote_programs(arch, Path(tmp) / arch / "programs")
            _keep(Path(tmp) / arch / "programs", dest / arch / "programs")
            print(f"{arch}: done", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _keep(run: Path, dest: Path) -> None:
    for pattern in KEEP:
        for f in run.rglob(pattern):
            target = dest / f.relative_to(run)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)


def compare(a: Path, b: Path) -> int:
    fa = {str(p.relative_to(a)) for p in a.rglob("*") if p.is_file()}
    fb = {str(p.relative_to(b)) for p in b.rglob("*") if p.is_file()}
    bad = [f"only in {a}: {f}" for f in sorted(fa - fb)] + [f"only in {b}: {f}" for f in sorted(fb - fa)]
    bad += [f"differs: {f}" for f in sorted(fa & fb) if (a / f).read_bytes() != (b / f).read_bytes()]
    print("\n".join(bad) if bad else f"{len(fa)} files, all byte-identical")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "save":
        save(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        raise SystemExit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        raise SystemExit(__doc__)
