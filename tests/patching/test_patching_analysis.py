"""Analysis tables and figures of a patch sweep on tiny models."""

from __future__ import annotations

import pytest

from ivlens.models.load import LoadedModel
from ivlens.patching.analysis import analyse
from ivlens.patching.sweep import patch_sweep
from ivlens.runs import RunDir
from ivlens.testing.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def models():
    tok = tiny_tokenizer()
    return [LoadedModel.wrap(tiny_model("olmo2", seed=s, n_layers=4, d_model=64), tok, n)
            for s, n in ((0, "base"), (1, "sft"), (2, "dpo"))]


def test_analyse_writes_tables_and_figures(models, tmp_path):
    run = RunDir.create("patch", "t", out=tmp_path / "run")
    res = patch_sweep(models, "adjectives", "adj_ant", layers="triplets", samples=6, run=run, chunk_size=4)
    an = analyse(res.rows, run=run)
    for t in ("patch", "baselines", "single_layer", "interactions", "additivity", "strongest_sets"):
        assert len(run.read_table(t)) > 0
    for f in ("single_layer.png", "pair_heatmaps.png", "strongest_sets.md"):
        assert (run.path / "figures" / f).stat().st_size > 0
    assert set(an.additivity.set_size) == {2, 3}
    assert (an.additivity.n_sets[an.additivity.set_size == 2] == 6).all()
    # the last-position identity shows up in the interactions: joint(S, last) = e({max S}, last)
    last = res.rows[res.rows.position == "last"].set_index(["model", "sample", "layers"]).delta_logit_vs_target
    for (model, sample, layers), v in last.items():
        top = layers.split(",")[-1]
        assert v == pytest.approx(last[(model, sample, top)], abs=1e-6)
