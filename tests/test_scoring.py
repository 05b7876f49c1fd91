"""Teacher-forced scoring with each prompt run once (:mod:`ivlens.scoring`): the token trie, the scores against plain
full forwards of every family, and every caller (eval's ``answer_*`` columns, the patch sweep's answer scores, the
organism's ``score_answers``) against the per-label implementation it replaced (one forward of prompt + label per
candidate), to 1e-4."""

from __future__ import annotations

import numpy as np
import patching_reference as ref
import pytest
import torch

from ivlens.models.adapters import get_adapter
from ivlens.patching.engine import (
    EngineStats,
    RowSpec,
    clean_answer_logprobs,
    clean_continuation_logprobs,
    clean_run,
    patched_answer_logprobs,
    patched_continuation_logprobs,
    source_vectors,
)
from ivlens.patching.metrics import answer_metrics, continuation_logprobs
from ivlens.scoring import ContinuationTrie, run_prompts, score_continuations, teacher_forced_scores
from ivlens.tasks.prompts import pad_left, right_aligned
from ivlens.testing.tiny import tiny_model, tiny_tokenizer

TOL = 1e-4
#: families whose attention, positions or caches differ: learned positions (gpt2), parallel residual and partial
#: rotary (gpt_neox), sliding windows that bite (gemma2 alternating, gemma3 local RoPE, mistral every layer,
#: qwen3 from a layer on), soft-caps (gemma2), post-norm (olmo2), GQA (llama, qwen2), no adapter (stablelm)
FAMILIES = ("olmo2", "llama", "qwen2", "gpt2", "gpt_neox", "gemma2", "gemma3", "mistral", "qwen3", "stablelm")
#: prompts of different lengths (left padding in a batch), BOS first; one listed twice (run once)
PROMPTS = [(2, 20, 21, 22, 23, 24, 25), (2, 40, 41), (2, 60, 61, 62, 63, 64, 65, 66, 67, 68), (2, 40, 41)]
#: continuations sharing prefixes at several depths, one of a single token, one that is a prefix of others
CONTS = [(50,), (50, 51), (50, 51, 52), (50, 52), (53, 54, 55, 56), (57,), (50, 51, 58)]


def _kv(arch: str) -> dict:
    return {} if arch in ("gpt2", "gpt_neox") else {"n_kv_heads": 2}


@torch.no_grad()
def full_forward_scores(model, prompt, cont) -> tuple[float, bool]:
    """One unpadded forward of ``prompt + cont``: the log-probability of ``cont`` (float64) and whether each of its
    tokens is the argmax of its position."""
    logits = model(input_ids=torch.tensor([list(prompt) + list(cont)])).logits[0]
    n = len(prompt)
    rows = logits[n - 1:n - 1 + len(cont)]
    logp = rows.double().log_softmax(-1)
    return float(sum(logp[i, c] for i, c in enumerate(cont))), bool((rows.argmax(-1) == torch.tensor(cont)).all())


# ------------------------------------------------------------------------------------------------ the trie
def test_the_trie_runs_each_distinct_prefix_once():
    # numbers after "Answer:" in SmolLM2's tokenizer: a space token, then one token per digit
    labels = [(7,) + tuple(10 + int(ch) for ch in str(n)) for n in range(150)]
    trie = ContinuationTrie.build(2, [0] * 150 + [1] * 150, labels + labels)
    # per prompt: the space (1), "1".."9" after it (9; "0" ends there), "10".."14" (5): 15 nodes, not 150 forwards
    assert [len(t) for t in trie.token] == [2, 2, 18, 10] and trie.n_nodes == 30
    for d in range(1, 4):  # sorted by parent, so the children of a run of parents are a run
        assert (np.diff(trie.parent[d]) >= 0).all()
        assert (trie.owner[d] == trie.owner[d - 1][trie.parent[d]]).all()
    # every continuation token is picked exactly once, by the node of its prefix
    picks = sorted((int(c), d) for d in range(4) for c in trie.pick_cont[d])
    assert picks == sorted((i, d) for i, lab in enumerate(labels + labels) for d in range(len(lab)))
    assert trie.children(1, 0, 1) == (0, 9) and trie.children(3, 0, 10) == (0, 0)
    with pytest.raises(ValueError, match="empty continuation"):
        ContinuationTrie.build(1, [0], [()])


# ------------------------------------------------------------------------------------------- the scorer
@pytest.mark.parametrize("arch", FAMILIES)
def test_teacher_forced_scores_equal_full_forwards(arch):
    model = tiny_model(arch, n_layers=4, d_model=64, **_kv(arch))
    pairs = [(p, c) for p in PROMPTS for c in CONTS]
    want = [full_forward_scores(model, p, c) for p, c in pairs]
    want_lp = torch.tensor([w[0] for w in want], dtype=torch.float32)
    for budget in (None, 1):  # the default budget, and one node per chunk (every level split)
        got = teacher_forced_scores(model, [p for p, _ in pairs], [c for _, c in pairs], pad_id=1,
                                    memory_budget=budget)
        torch.testing.assert_close(got.logprob, want_lp, atol=TOL, rtol=0)
        assert got.greedy.tolist() == [w[1] for w in want]
    # three distinct prompts, each with the proper prefixes (50), (50, 51), (53), (53, 54), (53, 54, 55) as nodes
    assert got.nodes == 3 * 5
    state = run_prompts(model, PROMPTS[:3], pad_id=1)
    one = score_continuations(model, state, [0, 2, 2], [CONTS[2], CONTS[4], (57,)])
    torch.testing.assert_close(one.logprob, torch.tensor([want[2][0], want[2 * 7 + 4][0], want[2 * 7 + 5][0]],
                                                         dtype=torch.float32), atol=TOL, rtol=0)


def test_scores_do_not_depend_on_the_pad_token_or_the_batch():
    model = tiny_model("gemma2", n_layers=4, d_model=64, n_kv_heads=2)
    a = teacher_forced_scores(model, [PROMPTS[0]] * 3, CONTS[:3], pad_id=1)
    # the same pairs at rows 0, 3, 6, padded beside a longer prompt, with another pad id
    b = teacher_forced_scores(model, PROMPTS[:3] * 2 + PROMPTS[:1], [c for c in CONTS[:3] for _ in range(3)][:7],
                              pad_id=5)
    torch.testing.assert_close(a.logprob, b.logprob[[0, 3, 6]], atol=TOL, rtol=0)


# ------------------------------------------------------------------------------- the patching engine's path
@pytest.mark.parametrize("arch", FAMILIES[:-1])
def test_patched_answer_logprobs_equal_the_per_label_engine_and_a_hooked_forward(arch):
    """Each patched prompt once, the candidates against its keys/values == one engine row per (row, candidate)
    over prompt + candidate (the implementation it replaces) == a hooked plain forward; also at the last position
    with lower layers in the set, whose keys/values the candidates read."""
    model = tiny_model(arch, n_layers=4, d_model=64, **_kv(arch))
    adapter = get_adapter(model)
    prompts, conts = PROMPTS[:3], CONTS[1:6]
    k = len(conts)
    source = (2, 30, 31, 32)
    ivs = source_vectors(adapter, [source], pad_id=1)
    sets = [(0,), (1, 3), (0, 2, 3), (3,), (1,), (2, 3)]
    rows = [RowSpec(b, 0, s, t) for b, p in enumerate(prompts) for t in (0, 1, len(p) - 2, len(p) - 1) for s in sets]
    clean = clean_run(adapter, prompts, pad_id=1)
    per_label_clean = clean_run(adapter, [p + c[:-1] for p in prompts for c in conts], pad_id=1)
    tails = right_aligned([c for _p in prompts for c in conts])
    old = patched_continuation_logprobs(adapter, per_label_clean, ivs,
                                        [RowSpec(r.target * k + j, 0, r.layers, r.token) for r in rows
                                         for j in range(k)], tails).view(-1, k)
    # one group; and (two families) groups of 2 rows, scored one row and one trie node at a time
    for batch_size, budget in ((None, None),) + (((2, 1 << 20),) if arch in ("llama", "gemma2") else ()):
        stats = EngineStats()
        new = patched_answer_logprobs(adapter, clean, ivs, rows, [conts] * len(prompts), batch_size=batch_size,
                                      memory_budget=budget, stats=stats)
        torch.testing.assert_close(new, old, atol=TOL, rtol=0)
        assert stats.executed_evals > 0 and stats.rows == len(rows)
    ref_ivs = ref.source_ivs(model, source)
    for i in (0, 7, len(rows) - 1, len(rows) - 5):  # first position, last position with sets (1, 3), (0, 2, 3)
        r = rows[i]
        want = [ref.patched_continuation_logprob(model, prompts[r.target], c, ref_ivs, r.layers, r.token)
                for c in conts]
        torch.testing.assert_close(new[i], torch.tensor(want, dtype=torch.float32), atol=TOL, rtol=0)
    base = clean_answer_logprobs(adapter, clean, [conts] * len(prompts))
    torch.testing.assert_close(base, clean_continuation_logprobs(adapter, per_label_clean, tails).view(-1, k),
                               atol=TOL, rtol=0)


# ------------------------------------------------------------------------------------------------- eval
@torch.no_grad()
def per_label_logprobs(lm, prompt, labels) -> torch.Tensor:
    """The implementation eval used before: one left-padded forward of prompt + label[:-1] per label, 16 at a time."""
    from ivlens.tasks.prompts import label_token_ids

    conts = [label_token_ids(lm.tokenizer, prompt, lab) for lab in labels]
    out = []
    for start in range(0, len(conts), 16):
        part = conts[start:start + 16]
        tokens = right_aligned(part)
        batch = pad_left([prompt.input_ids + c[:-1] for c in part], lm.tokenizer.pad_token_id)
        logits = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          position_ids=batch.position_ids).logits[:, -tokens.shape[1]:]
        out.append(continuation_logprobs(logits, tokens))
    return torch.cat(out)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_eval_answer_columns_equal_the_per_label_implementation(arch):
    from ivlens.eval import build_items, evaluate
    from ivlens.models.load import LoadedModel
    from ivlens.tasks import load_task
    from ivlens.tasks.prompts import AnswerCandidates

    task = load_task("animals")
    lm = LoadedModel.wrap(tiny_model(arch, n_layers=2, d_model=32), tiny_tokenizer(), "tiny")
    samples = task.samples[:3]
    df = evaluate(lm, task, samples, score="answer", max_new_tokens=2, batch_size=5)
    assert len(df) == 3 * 2 * 3
    for r in df.itertuples():
        cands = AnswerCandidates.of(task, r.subtask)
        prompt = build_items(lm, task, [task.samples[r.sample]], [r.subtask], "raw", [r.condition])[0].prompt
        scores = per_label_logprobs(lm, prompt, cands.labels)
        accepted = [cands.labels.index(a) for a in task.samples[r.sample].answers[r.subtask]]
        best = max(accepted, key=lambda i: scores[i].item())
        top = int(scores.argmax())
        assert r.answer_logprob == pytest.approx(scores[best].item(), abs=TOL)
        assert r.answer_rank == 1 + int((scores > scores[best]).sum())
        assert r.answer_rank_in_space == 1 + int((scores[cands.in_space] > scores[best]).sum())
        assert r.answer_top1 == (r.answer_rank == 1)
        assert r.answer_ia == bool(cands.in_space[top]) and r.answer_accuracy == (top in accepted)


# ------------------------------------------------------------------------------------------------ the sweep
def per_label_answer_scores(lm, prompts, plan, ivs, candidates):
    """The patch sweep's answer scoring before: every target extended by every candidate, one engine row each."""
    from ivlens.patching.sweep import pad_token_id_of
    from ivlens.tasks.prompts import label_token_ids

    adapter, pad, tok, k = lm.adapter, pad_token_id_of(lm), lm.tokenizer, len(candidates.labels)

    def extended(prompt):
        conts = [label_token_ids(tok, prompt, c) for c in candidates.labels]
        return [prompt.input_ids + c[:-1] for c in conts], conts

    t_seqs, t_conts, i_seqs, i_conts = [], [], [], []
    for p in prompts:
        seqs, conts = extended(p.target)
        t_seqs, t_conts = t_seqs + seqs, t_conts + conts
        seqs, conts = extended(p.instructed)
        i_seqs, i_conts = i_seqs + seqs, i_conts + conts
    clean = clean_run(adapter, t_seqs, pad)
    specs = [RowSpec(b * k + j, 0, layers, t) for b, p in enumerate(prompts) for t in p.positions
             for layers in plan.layer_sets for j in range(k)]
    scores = patched_continuation_logprobs(adapter, clean, ivs, specs, right_aligned(t_conts)).view(-1, k)
    base_t = clean_continuation_logprobs(adapter, clean, right_aligned(t_conts)).view(-1, k)
    base_i = clean_continuation_logprobs(adapter, clean_run(adapter, i_seqs, pad), right_aligned(i_conts)).view(-1, k)
    label = torch.tensor([candidates.index(p.label) for p in prompts])
    alt = torch.tensor([candidates.index(p.alt_label) for p in prompts])
    row_b = torch.arange(len(prompts)).repeat_interleave(scores.shape[0] // len(prompts))
    return (answer_metrics(scores, label[row_b], alt[row_b], candidates.in_space),
            answer_metrics(base_t, label, alt, candidates.in_space),
            answer_metrics(base_i, label, alt, candidates.in_space))


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_sweep_answer_columns_equal_the_per_label_implementation(arch):
    from ivlens.models.load import LoadedModel
    from ivlens.patching.plan import PatchPlan
    from ivlens.patching.sweep import pad_token_id_of, patch_sweep, prepare
    from ivlens.tasks import instruction_prompt, load_task
    from ivlens.tasks.prompts import AnswerCandidates

    task = load_task("animals")
    lm = LoadedModel.wrap(tiny_model(arch, n_layers=3, d_model=48), tiny_tokenizer(), "tiny")
    res = patch_sweep(lm, task, "anim_color", layers="pairs", positions="first,last,t_inst", samples=[0, 3],
                      target="formatted", mode="contrastive", score="answer")
    plan = PatchPlan.build("pairs", "first,last,t_inst", lm.n_layers)
    prompts, instruction = prepare(lm, task, "anim_color", plan, [0, 3], "contrastive", "formatted", "raw")
    ivs = source_vectors(lm.adapter, [instruction_prompt(lm.tokenizer, instruction).input_ids], pad_token_id_of(lm))
    got, base_t, base_i = per_label_answer_scores(lm, prompts, plan, ivs, AnswerCandidates.of(task, "anim_color"))
    rows = res.rows
    assert len(rows) == len(got["logit"]) == 2 * 3 * len(plan.layer_sets)
    for name, want in got.items():
        np.testing.assert_allclose(rows[name].to_numpy(dtype=float), want.double().numpy(), atol=TOL, rtol=0,
                                   equal_nan=True, err_msg=name)
    base = res.baselines.set_index(["run", "sample"])
    for run, want_m in (("target", base_t), ("instructed", base_i)):
        for name, want in want_m.items():
            np.testing.assert_allclose(base.loc[run].loc[[0, 3], name].to_numpy(dtype=float),
                                       want.double().numpy(), atol=TOL, rtol=0, equal_nan=True, err_msg=name)


# ------------------------------------------------------------------------------------------- the organism
def test_organism_score_answers_equal_the_per_pair_forward():
    """``score_answers`` on an organism-shaped model (the organism's OLMo-2 config and BPE, weights spread so that
    argmaxes are clear) == the forward it replaced: prompt + answer, right-padded, 256 pairs at a time."""
    from ivlens.organism import data as D
    from ivlens.organism.measure import _answer_ids, score_answers
    from ivlens.organism.tokenizer import encode, train_tokenizer
    from ivlens.organism.train import SIZES, new_model

    tasks = D.load_tasks()
    tok = train_tokenizer(D.pretraining_sentences(tasks, 0)[:2000], D.task_words(tasks), 1200)
    model = new_model(SIZES["tiny"], tok, seed=0).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.get_input_embeddings().weight, std=1.0)
    task = tasks["adjectives"]
    samples = task.samples[:8]
    prompts, answers = [], []
    for sub, spec in task.subtasks.items():
        for s in samples:
            p = encode(tok, D.raw_prompt(spec.instruction, task.field, s.query))
            for a in (s.answer(sub), s.answer(task.other(sub))):
                prompts.append(p)
                answers.append(_answer_ids(tok, a))
    with torch.no_grad():  # the model's own greedy 2-token answers: greedy must hold for these
        for p in prompts[:8:2]:
            first = model(input_ids=torch.tensor([p])).logits[0, -1].argmax().item()
            second = model(input_ids=torch.tensor([p + [first]])).logits[0, -1].argmax().item()
            prompts.append(p)
            answers.append([first, second])
    greedy, logp = score_answers(model, tok, prompts, answers)
    ids = torch.full((len(prompts), max(len(p) + len(a) for p, a in zip(prompts, answers, strict=True))),
                     tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        ids[i, :len(p) + len(a)] = torch.tensor(p + a)
        mask[i, :len(p) + len(a)] = 1
    with torch.no_grad():
        lp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        rows = lp[i, len(p) - 1:len(p) - 1 + len(a)]
        assert logp[i] == pytest.approx(float(rows.gather(-1, torch.tensor(a)[:, None]).sum()), abs=TOL)
        assert greedy[i] == bool((rows.argmax(-1) == torch.tensor(a)).all())
    assert all(greedy[-4:]) and not all(greedy)
