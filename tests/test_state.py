"""State that survives a crash and leaves nothing changed: atomic JSON, the organism's completion marker,
scoped global settings, the leak-detecting fixture."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from conftest import _restore, global_state

import ivlens
from ivlens.runs import atomic_write_json
from ivlens.scoped import blas_threads, logger_levels, quiet_libraries, torch_threads

PACKAGE = Path(ivlens.__file__).parent


def test_every_file_write_in_the_package_goes_through_the_atomic_helpers():
    """No ``json.dump``, ``write_text`` or ``open(..., "w")`` outside ``ivlens/runs.py``, which defines
    ``atomic_write_bytes/text/json/parquet``."""
    direct = re.compile(r"json\.dump\(|\.write_text\(|\.write_bytes\(|open\([^)]*[\"'][wa]b?[\"']")
    offenders = [f"{p.relative_to(PACKAGE)}:{i}: {line.strip()}"
                 for p in sorted(PACKAGE.rglob("*.py")) if p.name != "runs.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if direct.search(line)]
    assert offenders == []


def test_atomic_json_replaces_whole_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "card.json"
    atomic_write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}

    def fail(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr("ivlens.runs.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(path, {"a": 2, "b": "ü"})
    assert json.loads(path.read_text()) == {"a": 1}  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]


def test_torch_threads_and_logger_levels_are_restored_also_after_an_error():
    threads = torch.get_num_threads()
    lg = logging.getLogger("ivlens.tasks")
    level = lg.level
    with pytest.raises(RuntimeError), torch_threads(threads + 1), logger_levels(["ivlens.tasks"], logging.ERROR):
        assert torch.get_num_threads() == threads + 1 and lg.level == logging.ERROR
        raise RuntimeError("boom")
    assert torch.get_num_threads() == threads and lg.level == level
    with torch_threads(None):
        assert torch.get_num_threads() == threads


def test_blas_threads_sets_numpys_blas_and_restores_it_also_after_an_error():
    """Inside the block (or a function decorated with it) numpy's BLAS runs on one thread; after it, on as many as
    before, also when the block raises."""
    import numpy as np  # noqa: F401  (loads numpy's OpenBLAS)
    from threadpoolctl import threadpool_info

    def blas() -> list[int]:
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before = blas()
    with pytest.raises(RuntimeError), blas_threads(1):
        assert blas() and set(blas()) == {1}
        raise RuntimeError("boom")
    assert blas() == before
    assert set(blas_threads(1)(blas)()) == {1} and blas() == before


def test_quiet_libraries_silences_bars_and_restores_them():
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    before = global_state()
    original_tqdm = gguf_utils.tqdm
    with quiet_libraries():
        assert not hf_logging.is_progress_bar_enabled()
        assert hf_logging.get_verbosity() == logging.ERROR
        assert gguf_utils.tqdm([1, 2], desc="Converting and de-quantizing GGUF tensors...").disable
        assert logging.getLogger("transformers").getEffectiveLevel() == logging.ERROR
    assert gguf_utils.tqdm is original_tqdm
    assert global_state() == before
    with quiet_libraries(verbose=True):  # --verbose: everything as the libraries set it
        assert hf_logging.is_progress_bar_enabled() == before["transformers progress bars"]


def test_the_fixture_sees_each_kind_of_leak_and_restores_it(monkeypatch):
    before = global_state()
    torch.set_num_threads(before["torch threads"] + 1)
    torch.set_grad_enabled(False)
    logging.getLogger("transformers").setLevel(logging.CRITICAL)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    after = global_state()
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"torch threads", "grad mode", "logger transformers level", "transformers verbosity",
                       "env TQDM_DISABLE"}
    monkeypatch.delenv("TQDM_DISABLE")
    _restore(before)
    assert global_state() == before


def test_wrapping_a_model_leaves_the_callers_tokenizer_as_it_was(tok):
    from ivlens.models.load import LoadedModel
    from ivlens.testing.tiny import tiny_model

    tok.padding_side = "right"
    lm = LoadedModel.wrap(tiny_model("olmo2"), tok, "tiny")
    assert lm.tokenizer.padding_side == "left" and tok.padding_side == "right"


def test_cli_logging_restores_the_root_logger():
    from ivlens.cli.common import cli_logging

    before = global_state()
    with cli_logging(verbose=True):
        assert logging.getLogger().level == logging.INFO
    with cli_logging(verbose=False):
        assert logging.getLogger().level == logging.WARNING
    assert global_state() == before


# ------------------------------------------------------------------------------- organism build
def test_is_built_needs_the_completion_marker(tmp_path):
    from ivlens.organism.paths import BUILD_MARKER, STAGES, is_built, write_build_marker

    for stage in STAGES:
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "config.json").write_text("{}")
        (tmp_path / stage / "model.safetensors").write_bytes(b"")
    (tmp_path / "card.json").write_text("{}")
    assert not is_built(tmp_path)  # every file but the marker: an interrupted build
    write_build_marker(tmp_path, {s: "0" for s in STAGES})
    assert is_built(tmp_path)
    assert json.loads((tmp_path / BUILD_MARKER).read_text())["weights_sha256"] == {s: "0" for s in STAGES}
    (tmp_path / "dpo" / "model.safetensors").unlink()
    assert not is_built(tmp_path)


def test_a_killed_build_leaves_no_build_and_no_changed_state(tmp_path, monkeypatch):
    from ivlens.organism import build

    out = tmp_path / "gist"

    def killed(staging: Path, out: Path, **_kw):
        (staging / "base").mkdir()
        (staging / "base" / "config.json").write_text("{}")
        assert torch.get_num_threads() == build.THREADS
        raise KeyboardInterrupt

    before = global_state()
    monkeypatch.setattr(build, "_build_into", killed)
    with pytest.raises(KeyboardInterrupt):
        build.build_organism(out=out, size="tiny", progress=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert global_state() == before
