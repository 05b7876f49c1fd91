"""Families end to end, the way a user runs them: a tiny random checkpoint saved to disk with a tokenizer, then
``ivlens eval``, ``ivlens patch`` (equal to a naive one-forward-per-row hook patch) and ``ivlens probe`` through
``--model DIR``. A class without an adapter still evaluates and probes; patching it fails with the message that
names what is missing.

The CLI's plumbing does not depend on the family, so it runs on two that differ most (:data:`CLI_FAMILIES`). What
does depend on it is checked on all 14 in memory, against plain-PyTorch references: the patching engine and sweep
(``test_patching_engine.py``), IV collection (``test_probing_collect.py``), generation (``test_eval.py``), and the
round trip through a model directory (``test_load.py``)."""

from __future__ import annotations

import itertools

import pandas as pd
import patching_reference as ref
import pytest
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from ivlens.cli import app
from ivlens.runs import RunDir
from ivlens.tasks import load_task
from ivlens.testing.tiny import ARCHS, NO_ADAPTER_ARCHS, tiny_model, tiny_tokenizer

runner = CliRunner()
TOL = 1e-4


def _save(arch: str, root) -> str:
    d = root / arch
    kv = None if arch in ("gpt2", "gpt_neox") else 2  # GQA where the family has it
    tiny_model(arch, n_kv_heads=kv).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def task():
    return load_task("adjectives")


#: Gemma-2 (grouped-query attention, sliding windows, soft-caps, scaled embeddings, sandwich norms) and GPT-2
#: (multi-head attention, Conv1D weights, learned positions, biases).
CLI_FAMILIES = ("gemma2", "gpt2")


@pytest.mark.parametrize("arch", CLI_FAMILIES)
def test_eval_patch_probe_from_disk(arch, tmp_path, task):
    d = _save(arch, tmp_path)
    # eval: generation only
    r = runner.invoke(app, ["eval", "--model", d, "--task", "adjectives", "--subtask", "adj_ant", "--samples", "2",
                            "--out", str(tmp_path / "eval")])
    assert r.exit_code == 0, r.output
    assert len(RunDir.open(tmp_path / "eval").read_table("results")) > 0

    # patch: single, pair and triplet sets at the first and last positions, against a naive hooked forward per row
    sets = [(0,), (1, 2), (0, 1, 3)]
    r = runner.invoke(app, ["patch", "--model", d, "--task", "adjectives", "--subtask", "adj_ant",
                            "--layers", ";".join(",".join(map(str, s)) for s in sets), "--positions", "first,last",
                            "--samples", "2", "--no-figures", "--out", str(tmp_path / "patch")])
    assert r.exit_code == 0, r.output
    rows = RunDir.open(tmp_path / "patch").read_table("patch")
    model = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager").eval()
    samples = sorted(set(rows["sample"]))
    all_sets = [(0,), (1,), (2,), (3,), *sets[1:]]  # the CLI adds every single layer (for the interactions)
    want = ref.reference_rows(model, tiny_tokenizer(), task, "adj_ant", samples, all_sets, ["first", "last"],
                              "transfer", "bare")
    assert len(rows) == len(want) == 2 * len(all_sets) * 2
    for row in rows.itertuples():
        w = want[(row.sample, row.position, row.layers)]
        assert row.logit == pytest.approx(w["logit"], abs=TOL), (row.layers, row.position)
        assert row.delta_logit_vs_target == pytest.approx(w["delta_logit_vs_target"], abs=TOL)

    # probe: IVs at T_inst of two layers, probes by layer
    out = tmp_path / "probe"
    r = runner.invoke(app, ["probe", "--model", d, "--tasks", "adjectives,animals", "--layers", "0,-1",
                            "--max-per-subtask", "4", "--folds", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    acc = pd.read_parquet(out / "probe_accuracy.parquet")
    assert sorted(acc.layer.unique()) == [0, 3]


@pytest.mark.parametrize("arch", NO_ADAPTER_ARCHS)
def test_class_without_adapter_evaluates_and_probes(arch, tmp_path):
    d = _save(arch, tmp_path)
    r = runner.invoke(app, ["eval", "--model", d, "--task", "animals", "--samples", "2", "--out", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    out = tmp_path / "probe"
    r = runner.invoke(app, ["probe", "--model", d, "--tasks", "adjectives,animals", "--layers", "1",
                            "--max-per-subtask", "4", "--folds", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(pd.read_parquet(out / "probe_accuracy.parquet").layer.unique()) == [1]
    # patching needs the adapter: a one-line error that names the class, what to add and where
    r = runner.invoke(app, ["patch", "--model", d, "--samples", "1", "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    msg = " ".join(r.output.split())
    assert "no architecture adapter for StableLmForCausalLM" in msg and "register(Family" in msg
    # and so does tracing
    r = runner.invoke(app, ["trace", "--model", d, "--task", "adjectives", "--out", str(tmp_path / "t")])
    assert r.exit_code == 2 and "no architecture adapter" in " ".join(r.output.split())


def test_every_family_has_a_tiny_model():
    """ARCHS covers one class per registered family."""
    from ivlens.models.adapters import FAMILIES

    classes = {type(tiny_model(a, n_layers=1)).__name__ for a in ARCHS}
    assert classes == {c for f in FAMILIES for c in f.classes}
    assert len(list(itertools.chain(ARCHS))) == len(FAMILIES)


@pytest.mark.slow
def test_smollm2_eval_patch_probe_through_the_cli(tmp_path, task):
    """The real SmolLM2-135M-Instruct weights (LlamaForCausalLM from GGUF) the way a user runs them: eval, patch
    (equal to a naive hooked forward per row within 1e-4) and probe."""
    from ivlens.models.load import load_model

    name = "smollm2-135m-instruct"
    r = runner.invoke(app, ["eval", "--model", name, "--task", "adjectives", "--subtask", "adj_ant", "--samples", "2",
                            "--out", str(tmp_path / "eval")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["patch", "--model", name, "--task", "adjectives", "--subtask", "adj_ant",
                            "--layers", "5;10,20;3,15,27", "--positions", "first,last", "--samples", "1",
                            "--no-figures", "--out", str(tmp_path / "patch")])
    assert r.exit_code == 0, r.output
    rows = RunDir.open(tmp_path / "patch").read_table("patch")
    lm = load_model(name)
    assert len(rows) == (6 + 2) * 2  # the CLI adds the single layers of the listed sets (3, 5, 10, 15, 20, 27)
    sets = [(5,), (15,), (10, 20), (3, 15, 27)]  # a naive forward per row is slow on 135 M: check a subset
    want = ref.reference_rows(lm.model, lm.tokenizer, task, "adj_ant", sorted(set(rows["sample"])), sets,
                              ["first", "last"], "transfer", "bare")
    rows = rows[rows.layers.isin({",".join(map(str, s)) for s in sets})]
    assert len(rows) == len(want) == len(sets) * 2
    for row in rows.itertuples():  # fp32 over 30 layers: relative error (measured up to 3.8e-5 at logit 10.2)
        assert row.logit == pytest.approx(want[(row.sample, row.position, row.layers)]["logit"], rel=1e-4, abs=TOL)
    r = runner.invoke(app, ["probe", "--model", name, "--tasks", "adjectives,animals", "--layers", "0,15,-1",
                            "--max-per-subtask", "8", "--folds", "2", "--out", str(tmp_path / "probe")])
    assert r.exit_code == 0, r.output
    assert sorted(pd.read_parquet(tmp_path / "probe" / "probe_accuracy.parquet").layer.unique()) == [0, 15, 29]
