"""The one loop of units of work (:mod:`ivlens.units`): numbering across models, shard ownership, resume (a unit
whose complete unit file exists is skipped), atomic writes (a failed unit leaves no file and is not done), the
progress callback, and the final concatenation in the unsharded run's order, on disk and in memory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from ivlens.runs import RunDir
from ivlens.sharding import Shard
from ivlens.units import RunParts, TablePieces, Unit, UnitFiles, UnitLoop, unit_key

pytestmark = pytest.mark.unit

#: two "models", with 3 and 2 chunks of sample ids: the units, in the unsharded run's order
MODELS = ([[0, 1], [2, 3], [4]], [[5, 6], [7]])


def _run(path: Path) -> RunDir:
    return RunDir.create("test", "units", out=path)


def _tables(unit: Unit[list[int]]) -> dict[str, pd.DataFrame]:
    """A unit's rows: one per sample of its chunk, and one baseline row."""
    return {"base": pd.DataFrame({"key": [unit.key]}),
            "rows": pd.DataFrame({"number": unit.number, "key": unit.key, "sample": unit.work})}


def _sweep(store, owns=None, compute=_tables) -> tuple[UnitLoop, list[Unit]]:
    """Run the units of :data:`MODELS` model by model, as the analyses do; returns the loop and the units
    computed."""
    loop, ran = UnitLoop(store, owns=owns), []

    def counted(unit):
        ran.append(unit)
        return compute(unit)

    for mi, chunks in enumerate(MODELS):
        loop.run(loop.number((f"m{mi}-c{ci:05d}", chunk) for ci, chunk in enumerate(chunks)), counted)
    return loop, ran


def test_units_are_numbered_model_after_model():
    loop = UnitLoop(TablePieces(None, ("rows",)))
    first = loop.number([("m0-c00000", "a"), ("m0-c00001", "b")])
    second = loop.number([("m1-c00000", "c")])
    assert [(u.number, u.key, u.work) for u in first + second] == [(0, "m0-c00000", "a"), (1, "m0-c00001", "b"),
                                                                   (2, "m1-c00000", "c")]


def test_loops_into_stores_of_their_own_share_the_numbering_and_the_shard(tmp_path):
    """``UnitLoop.on``: each model's units in a directory of its own (probe's IV batches), numbered on from the
    last model's, and the shard owns the same units as one loop over all of them would."""
    batches = UnitLoop(None, owns=Shard(1, 2).owns)
    written = []
    for model, n in (("a", 3), ("b", 2)):
        loop = batches.on(UnitFiles(tmp_path / model, "shard-{key}.bin"))
        units = loop.number((f"{b:05d}", b) for b in range(n))
        loop.run(units, lambda unit: written.append(unit.number) or b"x")
        assert [u.number for u in units] == ([0, 1, 2] if model == "a" else [3, 4])
    assert written == [1, 3]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.bin")) == [
        "a/shard-00001.bin", "b/shard-00000.bin"]


def test_a_shard_computes_exactly_the_units_it_owns(tmp_path):
    owned = []
    for i in range(3):
        _, ran = _sweep(TablePieces(_run(tmp_path / f"s{i}"), ("base", "rows")), owns=Shard(i, 3).owns)
        assert [u.number for u in ran] == [u for u in range(5) if u % 3 == i]
        owned += [u.key for u in ran]
    assert sorted(owned) == ["m0-c00000", "m0-c00001", "m0-c00002", "m1-c00000", "m1-c00001"]  # once each


def test_resume_skips_the_units_whose_unit_files_exist(tmp_path):
    run = _run(tmp_path / "run")
    _, ran = _sweep(TablePieces(run, ("base", "rows")))
    assert len(ran) == 5
    _, again = _sweep(TablePieces(run, ("base", "rows")))
    assert again == []  # every unit done: nothing computed twice
    (run.path / "rows" / "shard-m0-c00001.parquet").unlink()  # killed after the base piece, before the rows piece
    _, again = _sweep(TablePieces(run, ("base", "rows")))
    assert [u.key for u in again] == ["m0-c00001"]
    full = _run(tmp_path / "full")
    _sweep(TablePieces(full, ("base", "rows")))
    resumed, uninterrupted = TablePieces(run, ("base", "rows")), TablePieces(full, ("base", "rows"))
    for table in ("base", "rows"):
        pd.testing.assert_frame_equal(resumed.read(table), uninterrupted.read(table))


def test_a_unit_that_fails_leaves_no_partial_file_and_is_computed_again(tmp_path, monkeypatch):
    run = _run(tmp_path / "run")

    def fails_on_m0_c1(unit):
        if unit.key == "m0-c00001":
            raise RuntimeError("killed")
        return _tables(unit)

    with pytest.raises(RuntimeError, match="killed"):
        _sweep(TablePieces(run, ("base", "rows")), compute=fails_on_m0_c1)
    assert sorted(p.name for p in run.path.rglob("*.parquet")) == ["shard-m0-c00000.parquet"] * 2

    real = pd.DataFrame.to_parquet

    def dies_while_writing(df, path, *args, **kwargs):  # a write killed half-way through its temporary file
        Path(path).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", dies_while_writing)
    with pytest.raises(OSError, match="disk full"):
        _sweep(TablePieces(run, ("base", "rows")))
    monkeypatch.setattr(pd.DataFrame, "to_parquet", real)
    assert not [p for p in run.path.rglob("*") if p.name.endswith(".tmp")]  # no temporary file left
    assert not (run.path / "base" / "shard-m0-c00001.parquet").exists()
    stray = run.path / "rows" / ".shard-m0-c00001.parquet.x.tmp"  # what a SIGKILL mid-write leaves behind
    stray.write_bytes(b"PAR1 half a file")
    _, ran = _sweep(TablePieces(run, ("base", "rows")))
    assert [u.key for u in ran] == ["m0-c00001", "m0-c00002", "m1-c00000", "m1-c00001"]


def test_unit_files_and_parts_are_written_atomically_and_resumed(tmp_path, monkeypatch):
    files = UnitFiles(tmp_path / "ivs", "shard-{key}.bin")
    loop = UnitLoop(files)
    units = loop.number((f"{b:05d}", b) for b in range(3))

    def dies(path, data):  # the write fails: the unit file is not there, so the unit is not done
        raise OSError("disk full")

    monkeypatch.setattr("ivlens.units.atomic_write_bytes", dies)
    with pytest.raises(OSError):
        loop.run(units, lambda u: bytes([u.work]))
    assert not files.has("00000")
    monkeypatch.undo()
    assert loop.run(units, lambda u: bytes([u.work])) == 3
    assert [files.path(u.key).read_bytes() for u in units] == [b"\x00", b"\x01", b"\x02"]
    assert loop.run(units, lambda u: pytest.fail("resumed units are not computed again")) == 0

    parts = RunParts(_run(tmp_path / "run"), "parts")
    loop = UnitLoop(parts)
    units = loop.number((f"s{i}", i) for i in range(2))
    assert loop.run(units, lambda u: ({"i": u.work}, {"x": torch.full((2,), float(u.work))})) == 2
    assert loop.run(units, lambda u: pytest.fail("resumed units are not computed again")) == 0
    data, tensors = parts.read("s1")
    assert data == {"i": 1} and tensors["x"].tolist() == [1.0, 1.0]


def test_progress_is_called_after_every_unit_computed_or_skipped(tmp_path):
    calls = []
    loop = UnitLoop(TablePieces(_run(tmp_path / "run"), ("rows",)), owns=Shard(0, 2).owns)
    units = loop.number((f"c{i}", [i]) for i in range(3))


    def rows(unit):
        return {"rows": pd.DataFrame({"x": unit.work})}

    loop.run(units, rows, progress=lambda u, ran: calls.append((u.key, ran)))
    assert calls == [("c0", True), ("c1", False), ("c2", True)]
    calls.clear()
    loop.run(units, rows, progress=lambda u, ran: calls.append((u.key, ran)))
    assert calls == [("c0", False), ("c1", False), ("c2", False)]  # resumed: done units count too


def test_merged_shards_concatenate_in_the_unsharded_order(tmp_path):
    """Three shards' unit files copied into one run (as ``ivlens merge`` does), then resumed: the tables equal the
    unsharded run's, on disk and in memory, row for row in the order of the units."""
    unsharded = TablePieces(_run(tmp_path / "unsharded"), ("base", "rows"))
    _sweep(unsharded)
    in_memory = TablePieces(None, ("base", "rows"))
    _sweep(in_memory)
    merged = _run(tmp_path / "merged")
    for i in range(3):
        shard = _run(tmp_path / f"s{i}")
        _sweep(TablePieces(shard, ("base", "rows")), owns=Shard(i, 3).owns)
        for src in shard.path.rglob("shard-*.parquet"):
            dst = merged.path / src.relative_to(shard.path)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    pieces = TablePieces(merged, ("base", "rows"))
    _, ran = _sweep(pieces)
    assert ran == []  # every unit is on disk: the merge computes nothing
    rows = pieces.read("rows")
    assert rows.number.tolist() == [0, 0, 1, 1, 2, 3, 3, 4]  # the units' order
    assert rows["sample"].tolist() == list(range(8))
    for table in ("base", "rows"):
        pd.testing.assert_frame_equal(pieces.read(table), unsharded.read(table))
        pd.testing.assert_frame_equal(pieces.read(table), in_memory.read(table))


def test_a_shard_that_owns_no_unit_reads_empty_tables(tmp_path):
    pieces = TablePieces(_run(tmp_path / "run"), ("rows",))
    loop = UnitLoop(pieces, owns=Shard(2, 3).owns)
    assert loop.run(loop.number([("c0", 0), ("c1", 1)]), lambda u: pytest.fail("not this shard's")) == 0
    assert pieces.read("rows").empty
    assert TablePieces(None, ("rows",)).read("rows").empty


def test_unit_keys_sort_in_the_unsharded_order_past_ten_models_and_chunks(tmp_path):
    """File-name order is the units' order: 12 models × 12 chunks read back in the order they were numbered
    (an unpadded ``m10`` would sort before ``m2``)."""
    assert unit_key(2, "c", 7) == "m0002-c00007" and unit_key(11) == "m0011"
    run = _run(tmp_path / "run")
    loop = UnitLoop(TablePieces(run, ("rows",)))
    work = [(unit_key(m, "c", c), (m, c)) for m in range(12) for c in range(12)]
    loop.run(loop.number(work), lambda unit: {"rows": pd.DataFrame({"m": [unit.work[0]], "c": [unit.work[1]]})})
    back = loop.store.read("rows")
    assert list(zip(back.m, back.c, strict=True)) == [w for _, w in work]
