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
