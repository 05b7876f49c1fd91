"""Where organisms live, and how model names resolve to them.

Layout: ``$IVLENS_CACHE/organism/<version>/<variant>/{base,sft,dpo}/`` plus ``card.json``, with
``IVLENS_CACHE`` defaulting to ``~/.cache/ivlens``. Names: ``organism-base|sft|dpo`` (the gist variant, the
default) and ``organism-<variant>-base|sft|dpo`` (e.g. ``organism-natural-sft``).
"""

from __future__ import annotations

import re
from pathlib import Path

from ivlens.models.cache import cache_root
from ivlens.runs import atomic_write_json

#: bump when the recipe changes, so that old builds are not reused
ORGANISM_VERSION = "v9"
VARIANTS = ("gist", "natural")
STAGES = ("base", "sft", "dpo")
DEFAULT_VARIANT = "gist"

_NAME = re.compile(r"^organism(?:-(?P<variant>[a-z]+))?-(?P<stage>base|sft|dpo)$")


def organism_dir(variant: str = DEFAULT_VARIANT) -> Path:
    """The default build directory of ``variant`` (holds ``base/ sft/ dpo/ card.json``)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown organism variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return cache_root() / "organism" / ORGANISM_VERSION / variant


def parse_organism_name(name: str) -> tuple[str, str] | None:
    """``(variant, stage)`` for an organism name, ``None`` if ``name`` is not one."""
    m = _NAME.match(name)
    if not m:
        return None
    variant = m.group("variant") or DEFAULT_VARIANT
    if variant not in VARIANTS:
        raise ValueError(f"unknown organism variant in {name!r}; choose from {', '.join(VARIANTS)}")
    return variant, m.group("stage")


#: written last by a build, atomically: its presence marks a finished build
BUILD_MARKER = "build-complete.json"


def write_build_marker(directory: Path, weights_sha256: dict[str, str]) -> Path:
    """Mark ``directory`` as a finished build (call after every other file is in place)."""
    path = Path(directory) / BUILD_MARKER
    atomic_write_json(path, {"version": ORGANISM_VERSION, "weights_sha256": weights_sha256})
    return path


def is_built(directory: Path) -> bool:
    """True when ``directory`` holds a finished build: the completion marker (written last), the card and
    every stage's config and weights."""
    directory = Path(directory)
    return ((directory / BUILD_MARKER).is_file() and (directory / "card.json").is_file()
            and all((directory / s / "config.json").is_file() and (directory / s / "model.safetensors").is_file()
                    for s in STAGES))


def resolve_organism(name: str) -> Path | None:
    """The checkpoint directory for an organism name if it is built; ``None`` if ``name`` is not an organism
    name. Raises ``FileNotFoundError`` naming the build command if it is one but is not built yet.

    >>> resolve_organism("organism-sft")        # ~/.cache/ivlens/organism/v9/gist/sft
    """
    parsed = parse_organism_name(name)
    if parsed is None:
        return None
    variant, stage = parsed
    directory = organism_dir(variant)
    if not is_built(directory):
        flag = "" if variant == DEFAULT_VARIANT else f" --variant {variant}"
        raise FileNotFoundError(
            f"model organism {name!r} is not built yet (looked in {directory}); "
            f"run `ivlens organism build{flag}` (`--dry-run` first says how long it takes on this machine)")
    return directory / stage
