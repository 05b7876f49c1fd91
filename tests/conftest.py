"""Shared fixtures: tiny random models of every supported architecture (built from config in milliseconds)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from ivlens.testing.tiny import ARCHS, tiny_model, tiny_tokenizer  # noqa: E402


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture
def tok():
    return tiny_tokenizer()


@pytest.fixture
def tiny_dir(tmp_path_factory):
    """Factory: save a tiny model of ``arch`` with the tiny tokenizer to a directory and return its path."""

    def make(arch: str = "olmo2", **kw):
        d = tmp_path_factory.mktemp(f"tiny-{arch}")
        tiny_model(arch, **kw).save_pretrained(d)
        tiny_tokenizer().save_pretrained(d)
        return d

    return make


@pytest.fixture(scope="session")
def two_tiny_dirs(tmp_path_factory) -> tuple[str, str]:
    """Two tiny OLMo-2 checkpoints (seeds 0 and 1, 4 layers, d_model 64) saved with the tiny tokenizer: the
    models of the study and shard tests."""
    dirs = []
    for seed in (0, 1):
        d = tmp_path_factory.mktemp(f"tiny-olmo2-seed{seed}")
        tiny_model("olmo2", seed=seed, n_layers=4, d_model=64, n_heads=4).save_pretrained(d)
        tiny_tokenizer().save_pretrained(d)
        dirs.append(str(d))
    return dirs[0], dirs[1]
