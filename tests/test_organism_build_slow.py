"""The real organism build and the issue's acceptance figures (``pytest -m slow``; about 6 min on 2 free cores).

Set ``IVLENS_ORGANISM_DIR`` to an existing build (e.g. ``~/.cache/ivlens/organism/v1/gist``) to check its
card instead of building afresh.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gist_build(tmp_path_factory) -> Path:
    given = os.environ.get("IVLENS_ORGANISM_DIR")
    if given:
        return Path(given)
    from ivlens.organism.build import build_organism

    return build_organism(out=tmp_path_factory.mktemp("org") / "gist", variant="gist", progress=False)


def test_gist_organism_meets_the_acceptance_figures(gist_build):
    from ivlens.organism.card import read_card

    card = read_card(gist_build)
    failing = {k: v for k, v in card["acceptance"].items() if k != "all_pass" and not v["pass"]}
    assert not failing, failing
    assert card["model"]["n_layers"] >= 6 and card["model"]["n_heads"] >= 4


def test_gist_organism_resolves_by_name(gist_build, monkeypatch):
    """The names resolve once a build sits in the cache layout."""
    from ivlens.organism.paths import ORGANISM_VERSION, resolve_organism

    if gist_build.parent.name != ORGANISM_VERSION:
        pytest.skip("build not in the cache layout")
    monkeypatch.setenv("IVLENS_CACHE", str(gist_build.parent.parent.parent))
    assert resolve_organism("organism-dpo") == gist_build / "dpo"
