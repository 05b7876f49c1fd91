"""The real organism build, its name resolution and its acceptance figures (``pytest -m slow``; one full
build on one thread).

Set ``IVLENS_ORGANISM_DIR`` to an existing build (e.g. ``~/.cache/ivlens/organism/v9/gist``) to check its
card instead of building afresh.

Issue 4's thresholds are recorded per figure in the card (``acceptance``); the seed-0 gist build meets every
one of them, and this test holds it to that.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from run_shared import built_once

pytestmark = pytest.mark.slow

@pytest.fixture(scope="session")
def gist_cache(tmp_path_factory) -> Path:
    """A cache root holding a gist build in the standard layout (``<root>/organism/<version>/gist``), built once
    per run (also with several xdist workers) on one torch thread: the share of a 2-core machine that an xdist
    worker has (two threads on one free core spin and took 542 s instead of about 170 s). Seed 0 on one thread is
    one of the ten builds the recipe is validated on (docs/organism.md, Validation); the main job builds on two."""
    given = os.environ.get("IVLENS_ORGANISM_DIR")
    if given:
        return Path(given).parent.parent.parent
    from ivlens.organism.build import build_organism
    from ivlens.organism.paths import ORGANISM_VERSION

    def build(root: Path) -> Path:
        build_organism(out=root / "organism" / ORGANISM_VERSION / "gist", variant="gist", progress=False, threads=1)
        return root

    return built_once(tmp_path_factory, "cache", build)


def test_gist_organism_acceptance_figures(gist_cache):
    from ivlens.organism.card import read_card
    from ivlens.organism.paths import ORGANISM_VERSION

    card = read_card(gist_cache / "organism" / ORGANISM_VERSION / "gist")
    assert card["model"]["n_layers"] >= 6 and card["model"]["n_heads"] >= 4
    checks = {k: v for k, v in card["acceptance"].items() if k != "all_pass"}
    failing = {k: v for k, v in checks.items() if not v["pass"]}
    assert card["acceptance"]["all_pass"] and not failing, failing
    # and with room: every check passes by the margin the recipe is held to over seeds and thread counts
    from ivlens.organism.build import ROBUST_MARGIN

    thin = {k: v["margin"] for k, v in checks.items() if v["margin"] < ROBUST_MARGIN}
    assert not thin, thin
    # every accuracy threshold, for both tasks and both post-trained stages: raw format (train, held out), the
    # chat template (held out) and "the instruction decides"
    accuracy = {k: v for k, v in checks.items() if "/acc_" in k or "decides" in k}
    assert len(accuracy) == 28 and sum("/acc_chat_heldout" in k for k in accuracy) == 8
    # the planted instruction vectors transfer on both tasks: some subtask's IV, patched at one layer into the
    # query-only prompt, makes the model answer inside that subtask's label space where it did not unpatched
    for stage in ("sft", "dpo"):
        for task in ("adjectives", "animals"):
            key = f"{stage}/{task}/iv_transfer"
            v = checks[key]["value"]
            assert v["ia_top1"] >= 0.5 and v["flip"] >= 0.5 and v["acc_in_space"] >= 0.9, v
    iv = card["measured"]["sft"]["adjectives"]["iv"]["subtasks"]
    # before the formatted query's content (its BOS or its first token, the paper's first position) each adjective
    # IV with room to move (unpatched IA < 1) raises its subtask's IA above the unpatched query's, and the IV of the
    # subtask the model does *not* default to there (the lower unpatched IA) takes over: IA >= 0.85. Which of the
    # two positions carries it varies by build: v9's seed 0 on one thread reaches 0.49 at the first token and 0.99 at
    # BOS (v8's reached it at the first token); over v9's 10 validation builds BOS or the first token reaches >= 0.94
    # in 9 (seed 3 on two threads: 0.67), and the first token alone in 7
    early = ("formatted/bos", "formatted/first")
    best = {sub: max(c["ia_top1"] for pos in early for c in iv[sub]["curves"][pos]) for sub in ("adj_comp", "adj_ant")}
    unpatched = {sub: iv[sub]["unpatched"]["formatted"]["ia_top1"] for sub in best}
    # a subtask the query does not already give (this build: adj_comp 0.00 unpatched), else the take-over is vacuous
    assert min(unpatched.values()) < 0.85, unpatched
    assert all(best[sub] > unpatched[sub] for sub in best if unpatched[sub] < 1), (best, unpatched)
    assert best[min(unpatched, key=unpatched.get)] >= 0.85, (best, unpatched)
    assert card["timing"]["total"] > 0 and card["stages"]["base"]["weights_sha256"]


def test_gist_organism_resolves_by_name_and_loads(gist_cache, monkeypatch):
    from ivlens.models.load import load_model
    from ivlens.organism.paths import ORGANISM_VERSION, resolve_organism

    monkeypatch.setenv("IVLENS_CACHE", str(gist_cache))
    assert resolve_organism("organism-dpo") == gist_cache / "organism" / ORGANISM_VERSION / "gist" / "dpo"
    lm = load_model("organism-sft")
    assert type(lm.model).__name__ == "Olmo2ForCausalLM" and lm.weight_hash


def test_the_remote_programs_run_the_organism_as_the_torch_engine(gist_cache, monkeypatch, tmp_path):
    """``--remote``'s nnsight programs, run locally on the built organism, give the torch engine's patch rows and
    the torch IV collection's IVs (to 1e-5)."""
    import numpy as np
    from test_remote import assert_same_rows

    from ivlens.models.load import load_model
    from ivlens.ndif import local_model
    from ivlens.patching import patch_sweep
    from ivlens.probing.collect import collect_ivs, load_layer
    from ivlens.probing.instructions import instruction_set

    monkeypatch.setenv("IVLENS_CACHE", str(gist_cache))
    lm = load_model("organism-dpo")
    kw = dict(layers="single", positions="first,last", samples=4, split="heldout")
    assert_same_rows(patch_sweep(lm, "adjectives", "adj_ant", **kw).rows,
                     patch_sweep(local_model(lm), "adjectives", "adj_ant", **kw).rows)
    rows = instruction_set(["adjectives"], "instructions", None, None, 4)
    a = collect_ivs(lm, rows, tmp_path / "torch", layers=[0, 5])
    b = collect_ivs(local_model(lm), rows, tmp_path / "nnsight", layers=[0, 5])
    for layer in (0, 5):
        np.testing.assert_allclose(load_layer(a.path, layer), load_layer(b.path, layer), atol=1e-5, rtol=0)
