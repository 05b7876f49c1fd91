"""Where ivlens keeps what it builds on this machine: the model organisms (:mod:`ivlens.organism.paths`) and
converted GGUF checkpoints (:mod:`ivlens.models.gguf_cache`)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$IVLENS_CACHE`` or ``~/.cache/ivlens``."""
    return Path(os.environ.get("IVLENS_CACHE") or Path.home() / ".cache" / "ivlens")
