"""Evaluation: answer matching, batched generation with left padding, first-token metrics vs a plain forward."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import torch

from ivlens.api import run_eval
from ivlens.eval import (
    EvalSpec,
    evaluate,
    generate_batch,
    in_label_space,
    instruction_decides,
    matches,
    normalize,
    summarize,
)
from ivlens.models.greedy import greedy_generate, lean_supported
from ivlens.models.load import LoadedModel
from ivlens.runs import RunDir
from ivlens.tasks import build_prompt, label_token_ids, load_task, pad_left
from ivlens.tasks.prompts import labels_token_ids
from ivlens.tasks.selection import select_samples
from ivlens.testing.tiny import tiny_model


def test_answer_matching():
    assert normalize("  Small.\nmore text") == "small"
    assert matches(" small", "small") and matches("Small!", "small") and matches("'yes'", "yes")
    assert matches("more beautiful, of course", "more beautiful")
    assert matches("small and big", "small")
    assert not matches("smaller", "small") and not matches("", "small")
    assert in_label_space(" no.", ["yes", "no"]) and not in_label_space(" maybe", ["yes", "no"])


def test_batched_generation_equals_one_by_one(arch, tok):
    lm = LoadedModel.wrap(tiny_model(arch), tok, arch)
    t = load_task("animals")
    prompts = [build_prompt(tok, t.subtasks["can_fly"].instruction if i % 2 else None, s.query, t.field)
               for i, s in enumerate(t.samples[:5])]
    texts, logits = generate_batch(lm, prompts, 4)
    for p, text, lg in zip(prompts, texts, logits, strict=True):
        one_text, one_logits = generate_batch(lm, [p], 4)
        assert one_text[0] == text
        torch.testing.assert_close(one_logits[0], lg, rtol=1e-4, atol=1e-4)


def _generate(model, batch, max_new_tokens, eos, pad):
    return model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
                          eos_token_id=eos, return_dict_in_generate=True, output_logits=True, temperature=None,
                          top_p=None, top_k=None)


def test_lean_greedy_equals_generate(arch, tok):
    """The lean greedy loop gives generate's tokens and first-step logits bit for bit: left-padded and unpadded
    batches, rows that end early (EOS) while others go on, and a batch that ends before max_new_tokens."""
    _check_lean_greedy(tiny_model(arch), tok)


@pytest.mark.parametrize("arch_sdpa", ["olmo2", "llama"])
def test_lean_greedy_equals_generate_sdpa(arch_sdpa, tok):
    """The same with SDPA attention (the default a loaded model gets), where the all-ones mask is dropped."""
    _check_lean_greedy(tiny_model(arch_sdpa, attn_implementation="sdpa"), tok)


def _check_lean_greedy(model, tok):
    assert lean_supported(model)
    t = load_task("animals")
    prompts = [build_prompt(tok, t.subtasks["can_fly"].instruction if i % 2 else None, s.query, t.field)
               for i, s in enumerate(t.samples[:5])]
    padded, unpadded = pad_left(prompts, tok.pad_token_id), pad_left(prompts[:1] * 2, tok.pad_token_id)
    assert bool((padded.attention_mask == 0).any()) and bool((unpadded.attention_mask == 1).all())
    free = _generate(model, padded, 6, tok.eos_token_id, tok.pad_token_id)
    n = padded.input_ids.shape[1]
    # an EOS the first row produces at its second step: that row ends early, the others do not (in general)
    early_eos = int(free.sequences[0, n + 1])
    for batch, eos in ((padded, tok.eos_token_id), (unpadded, tok.eos_token_id), (padded, early_eos)):
        ref = _generate(model, batch, 6, eos, tok.pad_token_id)
        seqs, first = greedy_generate(model, batch.input_ids, batch.attention_mask, 6, eos, tok.pad_token_id)
        assert torch.equal(seqs, ref.sequences)
        assert torch.equal(first, ref.logits[0].float())


def test_lean_greedy_falls_back_to_generate_for_other_decoding(tok):
    """A generation config asking for a logits processor (here a repetition penalty) is decoded by generate."""
    model = tiny_model("llama")
    model.generation_config.repetition_penalty = 1.5
    assert not lean_supported(model)
    t = load_task("animals")
    batch = pad_left([build_prompt(tok, None, s.query, t.field) for s in t.samples[:3]], tok.pad_token_id)
    ref = _generate(model, batch, 5, tok.eos_token_id, tok.pad_token_id)
    seqs, first = greedy_generate(model, batch.input_ids, batch.attention_mask, 5, tok.eos_token_id, tok.pad_token_id)
    assert torch.equal(seqs, ref.sequences) and torch.equal(first, ref.logits[0].float())


def test_label_token_ids_batched_equal_one_by_one(tok):
    t = load_task("adjectives")
    labels = [lab for st in t.subtasks.values() for lab in st.label_space] + ["more beautiful", "x"]
    for s in t.samples[:3]:
        p = build_prompt(tok, t.subtasks[t.subtask_names[0]].instruction, s.query, t.field)
        assert labels_token_ids(tok, p, labels) == [label_token_ids(tok, p, lab) for lab in labels]


def test_label_space_index_matches_label_by_label():
    labels = ["yes", "no", "more beautiful", "Small", "  ", "big!", "much more beautiful"]
    for answer in [" no.", "maybe", "more beautiful, of course", "more", "small and big", "", "Big", "much more",
                   "much more beautiful today", "'yes'", "  \n yes"]:
        assert in_label_space(answer, labels) == any(matches(answer, lab) for lab in labels), answer


def test_first_token_metrics_match_a_plain_forward(tok):
    model = tiny_model("llama")
    lm = LoadedModel.wrap(model, tok, "tiny")
    t = load_task("adjectives")
    samples = select_samples(t, 3, seed=1)
    df = evaluate(lm, t, samples, batch_size=4)
    assert len(df) == 3 * 2 * 3 and set(df["condition"]) == {"instructed", "query_only", "other_instruction"}
    for _, row in df.iterrows():
        ids = torch.tensor([tok(row["prompt"])["input_ids"]])
        with torch.no_grad():
            lg = model(ids).logits[0, -1]
        p = build_prompt(tok, None, row["query"], t.field)
        first = label_token_ids(tok, p, row["expected"].split(" | ")[0])[0]
        assert row["first_token_rank"] == 1 + int((lg > lg[first]).sum())  # 1 = top-1
        assert row["first_token_logit"] == pytest.approx(lg[first].item(), abs=1e-4)


def test_summary_and_decides():
    rows = []
    for sample, (a_ok, b_ok) in enumerate([(True, True), (True, False), (False, False), (True, True)]):
        for st, ok in (("a", a_ok), ("b", b_ok)):
            rows.append({"model": "m", "task": "t", "sample": sample, "subtask": st, "condition": "instructed",
                         "ia": True, "accuracy": ok, "first_token_rank": 1 if ok else 4, "first_token_top1": ok})
    df = pd.DataFrame(rows)
    d = instruction_decides(df)
    assert d.loc[0, "decides"] == 0.5 and d.loc[0, "n"] == 4
    s = summarize(df)
    assert s.set_index("subtask").loc["a", "accuracy"] == 0.75
    assert s.set_index("subtask").loc["b", "mrr"] == pytest.approx((1 + 0.25 + 0.25 + 1) / 4)


def test_run_eval_writes_run_directory(tmp_path, tok):
    lm = LoadedModel.wrap(tiny_model("gpt2"), tok, "tiny-gpt2")
    spec = EvalSpec(models=("tiny-gpt2",), task="animals", samples=4, seed=2)
    result = run_eval(spec, models=[lm], out=tmp_path / "run")
    run, summary, decides = result  # a named tuple: unpacks as before, and has .run like every analysis's result
    assert result.run is run and result.summary is summary
    assert (tmp_path / "run" / "manifest.json").exists()
    res = RunDir.open(tmp_path / "run").read_table("results")
    assert len(res) == 4 * 2 * 3 and set(res["split"]) == {"all"}
    assert run.manifest["status"] == "finished" and run.manifest["seed"] == 2
    assert run.manifest["models"][0]["architecture"] == "GPT2LMHeadModel"
    assert len(summary) == 6 and len(decides) == 1
    assert run.manifest["spec"] == spec.model_dump(mode="json") and run.manifest["spec_hash"] == spec.hash()
    # same seed, same samples, same numbers
    _, summary2, _ = run_eval(spec, models=[lm], out=tmp_path / "run2")
    pd.testing.assert_frame_equal(summary, summary2)


def test_run_eval_warns_about_label_clashes_once_per_subtask_not_per_model(tmp_path, tok, caplog):
    """Three models with one tokenizer (the organisms' case) used to repeat each clash warning three times."""
    lms = [LoadedModel.wrap(tiny_model("gpt2"), tok, f"tiny-{i}") for i in range(3)]
    spec = EvalSpec(models=tuple(lm.name for lm in lms), task="adjectives", samples=1, seed=0)
    with caplog.at_level(logging.WARNING, logger="ivlens.tasks.validate"):
        run_eval(spec, models=lms, out=tmp_path / "run")
    warned = [r.getMessage() for r in caplog.records if "share their first token" in r.getMessage()]
    assert sorted(m.split("subtask ")[1].split(":")[0] for m in warned) == ["'adj_ant'", "'adj_comp'"]


def test_judge_hook_replaces_label_space_test(tok):
    lm = LoadedModel.wrap(tiny_model("olmo2"), tok, "tiny")
    t = load_task("animals")
    df = evaluate(lm, t, t.samples[:2], ["can_fly"], conditions=["instructed"], judge=lambda a, st, s: True)
    assert df["ia"].all()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["raw", "chat"])
def test_eval_on_smollm2(fmt, tmp_path):
    """Real pretrained weights: the evaluation runs in both formats and its first-token ranks agree with a
    plain forward of the same prompt."""
    from ivlens.models.load import load_model

    lm = load_model("smollm2-135m-instruct")
    spec = EvalSpec(models=("smollm2-135m-instruct",), task="animals", samples=4, format=fmt)
    run, summary, _ = run_eval(spec, models=[lm], out=tmp_path / fmt)
    res = run.read_table("results")
    assert len(res) == 4 * 2 * 3 and summary["n"].sum() == len(res)
    row = res.iloc[0]
    enc = lm.tokenizer(row["prompt"], add_special_tokens=(fmt == "raw"), return_tensors="pt")
    with torch.no_grad():
        lg = lm.model(**enc).logits[0, -1]
    assert row["first_token_logit"] <= lg.max().item() + 1e-4
    assert 1 + (lg > row["first_token_logit"] + 1e-4).sum().item() <= row["first_token_rank"] <= 1 + (lg > row["first_token_logit"] - 1e-4).sum().item()
