"""Evaluation: answer matching, batched generation with left padding, first-token metrics vs a plain forward."""

from __future__ import annotations

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
from ivlens.models.load import LoadedModel
from ivlens.runs import RunDir
from ivlens.tasks import build_prompt, label_token_ids, load_task
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
        assert row["first_token_rank"] == int((lg > lg[first]).sum())
        assert row["first_token_logit"] == pytest.approx(lg[first].item(), abs=1e-4)


def test_summary_and_decides():
    rows = []
    for sample, (a_ok, b_ok) in enumerate([(True, True), (True, False), (False, False), (True, True)]):
        for st, ok in (("a", a_ok), ("b", b_ok)):
            rows.append({"model": "m", "task": "t", "sample": sample, "subtask": st, "condition": "instructed",
                         "ia": True, "accuracy": ok, "first_token_rank": 0 if ok else 3, "first_token_top1": ok})
    df = pd.DataFrame(rows)
    d = instruction_decides(df)
    assert d.loc[0, "decides"] == 0.5 and d.loc[0, "n"] == 4
    s = summarize(df)
    assert s.set_index("subtask").loc["a", "accuracy"] == 0.75
    assert s.set_index("subtask").loc["b", "mrr"] == pytest.approx((1 + 0.25 + 0.25 + 1) / 4)


def test_run_eval_writes_run_directory(tmp_path, tok):
    lm = LoadedModel.wrap(tiny_model("gpt2"), tok, "tiny-gpt2")
    spec = EvalSpec(models=("tiny-gpt2",), task="animals", samples=4, seed=2)
    run, summary, decides = run_eval(spec, models=[lm], out=tmp_path / "run")
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
    assert (lg > row["first_token_logit"] + 1e-4).sum().item() <= row["first_token_rank"] <= (lg > row["first_token_logit"] - 1e-4).sum().item()
