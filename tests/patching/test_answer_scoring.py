"""Answer-level scoring: teacher-forced label log-probabilities, patched and unpatched, against a plain hooked
forward; the metrics on those scores; and the run-time warning about first-token clashes."""

from __future__ import annotations

import math

import patching_reference as ref
import pytest
import torch

from ivlens.models.adapters import get_adapter
from ivlens.patching.engine import (
    RowSpec,
    clean_continuation_logprobs,
    clean_run,
    patched_continuation_logprobs,
    source_vectors,
)
from ivlens.patching.metrics import answer_metrics, continuation_logprobs
from ivlens.testing.tiny import tiny_model

TOL = 1e-4


def _right_aligned(conts: list[tuple[int, ...]]) -> torch.Tensor:
    width = max(len(c) for c in conts)
    return torch.tensor([[-1] * (width - len(c)) + list(c) for c in conts])


@pytest.mark.parametrize("arch", ["olmo2", "llama", "gpt2", "gemma2"])
def test_patched_continuation_logprobs_match_a_hooked_forward(arch):
    model = tiny_model(arch, n_layers=4, d_model=64)
    adapter = get_adapter(model)
    prompts = [(20, 21, 22, 23, 24), (40, 41, 42)]
    conts = [(50,), (51, 52), (53, 54, 55)]
    pairs = [(p, c) for p in prompts for c in conts]  # every prompt with every continuation
    seqs = [p + c[:-1] for p, c in pairs]
    clean = clean_run(adapter, seqs, pad_id=1)
    source = (30, 31, 32)
    ivs = source_vectors(adapter, [source], pad_id=1)
    rows = [RowSpec(b, 0, layers, token) for b, (p, _c) in enumerate(pairs)
            for token in (0, 1, len(p) - 1) for layers in ((0,), (1, 3), (0, 2, 3), (3,))]
    got = patched_continuation_logprobs(adapter, clean, ivs, rows, _right_aligned([c for _p, c in pairs]),
                                        batch_size=3)
    ref_ivs = ref.source_ivs(model, source)
    want = torch.tensor([ref.patched_continuation_logprob(model, pairs[r.target][0], pairs[r.target][1], ref_ivs,
                                                          r.layers, r.token) for r in rows], dtype=torch.float32)
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    # unpatched: the same sum from the clean run
    base = clean_continuation_logprobs(adapter, clean, _right_aligned([c for _p, c in pairs]))
    want_base = torch.tensor([ref.patched_continuation_logprob(model, p, c, ref_ivs, (), 0) for p, c in pairs])
    torch.testing.assert_close(base, want_base.float(), atol=TOL, rtol=0)


def test_a_patch_inside_the_continuation_is_refused():
    model = tiny_model("llama", n_layers=2, d_model=32)
    adapter = get_adapter(model)
    clean = clean_run(adapter, [(20, 21, 50, 51)], pad_id=1)  # prompt (20, 21) + continuation (50, 51, 52)[:-1]
    ivs = source_vectors(adapter, [(30,)], pad_id=1)
    with pytest.raises(ValueError, match="continuation"):
        patched_continuation_logprobs(adapter, clean, ivs, [RowSpec(0, 0, (0,), 2)], torch.tensor([[50, 51, 52]]))


def test_continuation_logprobs_sum_the_label_tokens_only():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [2.0, 0.0, 0.0]]])  # [1 row, tail 2, vocab 3]
    lsm = logits.log_softmax(-1)
    assert continuation_logprobs(logits, torch.tensor([[2, 0]])).item() == pytest.approx(
        (lsm[0, 0, 2] + lsm[0, 1, 0]).item())
    assert continuation_logprobs(logits, torch.tensor([[-1, 1]])).item() == pytest.approx(lsm[0, 1, 1].item())


def test_answer_metrics_rank_the_label_among_the_candidates():
    # candidates: "3", "4" (label space), "big" (another subtask's label)
    scores = torch.tensor([[-1.0, -2.0, -0.5],    # best overall is outside the space; label 0 best in space
                           [-3.0, -1.0, -4.0]])   # label 0 ranks second
    m = answer_metrics(scores, label=torch.tensor([0, 0]), alt=torch.tensor([1, -1]),
                       space=torch.tensor([True, True, False]))
    assert m["rank"].tolist() == [2, 2] and m["top1"].tolist() == [2, 1]
    assert m["ia_top1"].tolist() == [False, True] and m["acc_top1"].tolist() == [False, False]
    assert m["acc_space"].tolist() == [True, False]
    assert m["prob"][0].item() == pytest.approx(math.exp(-1.0))
    assert m["logit_diff"][0].item() == pytest.approx(1.0) and math.isnan(m["logit_diff"][1].item())


# ------------------------------------------------------------------------------- the sweep and eval
@pytest.fixture(scope="module")
def animals():
    from ivlens.tasks import load_task

    return load_task("animals")


def test_sweep_answer_scores_match_the_reference(animals):
    from ivlens.models.load import LoadedModel
    from ivlens.patching.sweep import patch_sweep
    from ivlens.tasks import instruction_prompt, label_token_ids, query_prompt
    from ivlens.tasks.prompts import AnswerCandidates
    from ivlens.testing.tiny import tiny_tokenizer

    model = tiny_model("qwen2", n_layers=3, d_model=48)
    lm = LoadedModel.wrap(model, tiny_tokenizer(), "tiny")
    tok = lm.tokenizer
    res = patch_sweep(lm, animals, "anim_color", layers="single", positions="first,last", samples=[0, 3],
                      target="formatted", score="answer")
    rows = res.rows
    assert set(rows["score"]) == {"answer"} and len(rows) == 2 * 2 * 3
    cands = AnswerCandidates.of(animals, "anim_color")
    ivs = ref.source_ivs(model, instruction_prompt(tok, animals.subtask("anim_color").instruction).input_ids)
    for r in rows.iloc[[0, 5, 11]].itertuples():
        target = query_prompt(tok, animals, animals.samples[r.sample], query_style="formatted")
        layers = tuple(int(x) for x in str(r.layers).split(","))
        scores = torch.tensor([ref.patched_continuation_logprob(model, target.input_ids,
                                                                label_token_ids(tok, target, c), ivs, layers,
                                                                r.pos_index) for c in cands.labels])
        y = cands.index(r.label)
        assert r.logit == pytest.approx(scores[y].item(), abs=TOL)
        assert r.rank == 1 + int((scores > scores[y]).sum())
        assert r.ia_top1 == bool(cands.in_space[int(scores.argmax())])
    base = res.baselines
    assert set(base["run"]) == {"target", "instructed"} and base["logit"].notna().all()


def test_eval_answer_scores_rank_whole_labels(animals):
    from ivlens.eval import evaluate, summarize
    from ivlens.models.load import LoadedModel
    from ivlens.tasks import label_token_ids
    from ivlens.tasks.prompts import AnswerCandidates
    from ivlens.testing.tiny import tiny_tokenizer

    lm = LoadedModel.wrap(tiny_model("llama", n_layers=2, d_model=32), tiny_tokenizer(), "tiny")
    df = evaluate(lm, animals, animals.samples[:2], ["can_fly"], score="answer", max_new_tokens=2)
    cands = AnswerCandidates.of(animals, "can_fly")
    for r in df.itertuples():
        prompt = next(it.prompt for it in _items(lm, animals, r))
        scores = torch.tensor([ref.patched_continuation_logprob(lm.model, prompt.input_ids,  # no patch: plain forward
                                                                label_token_ids(lm.tokenizer, prompt, c), None, (), 0)
                               for c in cands.labels])
        best = max((cands.index(a) for a in animals.samples[r.sample].answers["can_fly"]), key=lambda i: scores[i])
        assert r.answer_logprob == pytest.approx(scores[best].item(), abs=1e-5)
        assert r.answer_rank == 1 + int((scores > scores[best]).sum())
    summary = summarize(df)
    assert {"answer_ia", "answer_accuracy", "top1", "mrr"} <= set(summary.columns)
    with pytest.raises(ValueError, match="unknown score"):
        evaluate(lm, animals, animals.samples[:1], ["can_fly"], score="whole")


def _items(lm, task, row):
    from ivlens.eval import build_items

    return build_items(lm, task, [task.samples[row.sample]], [row.subtask], "raw", [row.condition])


# ------------------------------------------------------------------------------- SmolLM2 on numbers
@pytest.mark.slow
def test_smollm2_numbers_answer_scores_tell_instructed_from_query_only(caplog):
    """With SmolLM2's tokenizer every number starts with the same token, so first-token metrics are identical
    with and without the instruction; answer-level scores are not, and eval and patch warn at run time."""
    from ivlens.eval import evaluate, summarize
    from ivlens.models.load import load_model
    from ivlens.patching.sweep import patch_sweep
    from ivlens.tasks import load_task

    lm = load_model("smollm2-135m-instruct")
    task = load_task("object_counting")
    samples = task.samples[:4]
    with caplog.at_level("WARNING"):
        first = evaluate(lm, task, samples, conditions=("instructed", "query_only"), max_new_tokens=3)
    assert "--score answer" in caplog.text and "first token" in caplog.text
    by_cond = first.groupby("condition")
    assert by_cond["first_token_rank_in_space"].apply(lambda x: (x == 1).all()).all()  # cannot tell labels apart
    caplog.clear()
    with caplog.at_level("WARNING"):
        answer = evaluate(lm, task, samples, conditions=("instructed", "query_only"), max_new_tokens=3,
                          score="answer")
    assert "--score answer" not in caplog.text  # asked for: no warning
    inst = answer[answer.condition == "instructed"].set_index("sample")
    query = answer[answer.condition == "query_only"].set_index("sample")
    assert (inst["answer_logprob"] != query["answer_logprob"]).all()
    s = summarize(answer).set_index("condition")
    assert s.loc["instructed", "mrr"] != s.loc["query_only", "mrr"] or \
        (inst["answer_rank"] != query["answer_rank"]).any()
    assert (answer["answer_rank_in_space"] > 1).any()  # the rank inside the label space now moves

    caplog.clear()
    with caplog.at_level("WARNING"):
        ft = patch_sweep(lm, task, layers="20", positions="last", samples=[0], score="first-token")
    assert "--score answer" in caplog.text
    assert (ft.rows["rank"] == 1).all() or ft.rows["acc_space"].all()
    ans = patch_sweep(lm, task, layers="20", positions="last", samples=[0], score="answer")
    base = ans.baselines.set_index("run")
    assert base.loc["target", "logit"] != base.loc["instructed", "logit"]
    assert ans.rows["delta_logit_vs_target"].abs().max() > 0


@pytest.mark.cli
def test_cli_score_option_in_eval_and_patch(tiny_dir, tmp_path):
    from typer.testing import CliRunner

    from ivlens.cli import app
    from ivlens.runs import RunDir

    model = str(tiny_dir("llama", n_layers=2, d_model=32))
    r = CliRunner().invoke(app, ["eval", "--model", model, "--task", "animals", "--subtask", "can_fly", "--samples", "2",
                                 "--score", "answer", "--out", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    results = RunDir.open(tmp_path / "e").read_table("results")
    assert set(results["score"]) == {"answer"} and results["answer_rank"].notna().all()
    r = CliRunner().invoke(app, ["patch", "--model", model, "--task", "animals", "--subtask", "can_fly", "--samples",
                                 "1", "--layers", "single", "--positions", "last", "--score", "answer", "--no-figures",
                                 "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    run = RunDir.open(tmp_path / "p")
    assert run.manifest["args"]["score"] == "answer" and set(run.read_table("patch")["score"]) == {"answer"}
    r = CliRunner().invoke(app, ["eval", "--model", model, "--task", "animals", "--score", "whole"])
    assert r.exit_code == 2 and "first-token" in r.output
