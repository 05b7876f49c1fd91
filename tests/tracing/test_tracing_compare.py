"""Circuit-selector comparison: position alignment, similarity measures, the task-level loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ivlens.tasks import load_task
from ivlens.testing.tiny import tiny_model, tiny_tokenizer
from ivlens.tracing.compare import (
    Quartet,
    compare_graphs,
    compare_subtasks,
    edge_weights,
    head_activity,
    position_keys,
    top_k_overlap,
    weighted_jaccard,
)
from ivlens.tracing.graph import compute_graph, source_mask
from ivlens.tracing.selectivity import PAIRS
from ivlens.tracing.surrogate import Target, build_surrogate


def test_position_keys_align_prefix_and_suffix():
    a = [1, 2, 7, 8, 9, 5, 6]
    b = [1, 2, 4, 5, 6]
    ka, kb, K = position_keys(a, b)
    assert K == 2 + 1 + 2
    assert ka == [0, 1, 2, 2, 2, 3, 4] and kb == [0, 1, 2, 3, 4]
    same, _, K2 = position_keys(a, a)
    assert same == list(range(7)) and K2 == 8  # empty middle key


def test_similarity_measures():
    a = torch.tensor([0.5, 0.5, 0.0])
    b = torch.tensor([0.5, 0.0, 0.5])
    assert weighted_jaccard(a, a) == 1.0
    assert weighted_jaccard(a, b) == pytest.approx(0.5 / 1.5)
    assert top_k_overlap(a, a, 2) == 1.0 and top_k_overlap(a, b, 1) == 1.0


def test_identical_prompts_are_identical_circuits():
    model = tiny_model("llama", n_layers=2)
    ids = list(range(10, 19))
    g = compute_graph(build_surrogate(model, ids), Target.logit(5))
    c = compare_graphs(g, ids, g, ids)
    assert c.weighted_jaccard == pytest.approx(1.0) and c.top_k_overlap == 1.0
    assert c.per_layer == pytest.approx([1.0, 1.0])
    w = edge_weights(g, list(range(9)), 9)
    assert float(w.values.sum()) == pytest.approx(1.0)
    ids_b = [10, 11, 40, 41, 14, 15, 16, 17, 18]
    gb = compute_graph(build_surrogate(model, ids_b), Target.logit(5))
    assert compare_graphs(g, ids, gb, ids_b).weighted_jaccard < 1.0


@pytest.mark.parametrize("arch", ["olmo2", "gpt_neox"])
def test_head_activity_shares(arch):
    """Shares of each layer's cut (parallel residual: the whole layer's, MLP included) that go through heads."""
    model = tiny_model(arch, n_layers=2)
    sur = build_surrogate(model, list(range(10, 18)))
    g = compute_graph(sur, Target.logit(5), source_mask(8, 3, 3))
    act = head_activity(g)
    assert act.shape == (2, 4) and (act >= 0).all() and (act.sum(1) <= 1 + 1e-6).all()
    if sur.parallel:  # the MLP's mass is in the denominator
        mass = g.head.abs().sum((1, 2, 3)) + g.attn_skip.abs().sum(1) + g.mlp.abs().sum(1)
        torch.testing.assert_close(act.sum(1), g.head.abs().sum((1, 2, 3)) / mass)


def test_compare_subtasks_on_a_task():
    """A, B and the first rephrasing of each are traced per sample: the baseline is the mean of A vs A′ and B vs
    B′, the quartet holds all six pairs (recomputed here from graphs traced on their own) and the model's own
    next token under A and B (checked against a plain forward)."""
    from ivlens.tasks import instructed_prompt, label_token_ids

    task = load_task("adjectives")
    model, tok = tiny_model("olmo2", n_layers=2), tiny_tokenizer()
    res = compare_subtasks(model, tok, task, task.samples[:2], paths_k=20)
    assert len(res.ab) == len(res.rows) == len(res.baseline) == len(res.quartets) == 2
    assert res.completeness < 1e-4
    s = res.summary()
    assert len(s["per_layer_ab"]) == 2 and 0 <= s["weighted_jaccard"]["ab"]["mean"] <= 1
    assert len(s["per_layer_baseline"]) == 2
    assert set(res.head_activity) == {"adj_comp", "adj_ant"}
    sample, q = task.samples[1], res.quartets[1]
    prompts, graphs = [], []
    for sub, instruction in (("adj_comp", task.subtasks["adj_comp"].instruction),
                             ("adj_comp", task.subtasks["adj_comp"].rephrasings[0]),
                             ("adj_ant", task.subtasks["adj_ant"].instruction),
                             ("adj_ant", task.subtasks["adj_ant"].rephrasings[0])):
        p = instructed_prompt(tok, task, sample, instruction, "raw")
        ids = list(p.input_ids)
        prompts.append(ids)
        graphs.append(compute_graph(build_surrogate(model, ids),
                                    Target.logit(label_token_ids(tok, p, sample.answer(sub))[0])))
    for k, (i, j) in enumerate(PAIRS):
        c = compare_graphs(graphs[i], prompts[i], graphs[j], prompts[j])
        assert q.per_layer[k] == pytest.approx(c.per_layer) and q.whole[k] == pytest.approx(c.weighted_jaccard)
    assert res.ab[1].per_layer == q.per_layer[2]
    assert res.baseline[1].per_layer == pytest.approx(((np.array(q.per_layer[0]) + q.per_layer[1]) / 2).tolist())
    with torch.no_grad():
        logits = [model(input_ids=torch.tensor([prompts[k]])).logits[0, -1] for k in (0, 2)]
    assert (q.answer_a, q.answer_b) == (int(logits[0].argmax()), int(logits[1].argmax()))
    pa, pb = logits[0].double().softmax(-1), logits[1].double().softmax(-1)
    assert q.tv == pytest.approx(float(0.5 * (pa - pb).abs().sum()), abs=1e-6)
    assert res.rows[1]["answer_changes"] == (q.answer_a != q.answer_b)
    stacked = Quartet.stack(res.quartets)
    assert stacked.sims.shape == (2, 6, 2) and stacked.samples.tolist() == [0, 1]


def test_a_comparison_part_round_trips_without_pickle(tmp_path):
    """A unit of ``trace --compare`` is saved as JSON + safetensors (a handed-over run directory cannot run code
    on ``--resume`` or ``ivlens merge``) and reads back equal."""
    import numpy as np
    import torch

    from ivlens.runs import RunDir
    from ivlens.tracing.compare import GraphComparison, SubtaskComparison

    acts = {"a": [torch.rand(3, 4), torch.rand(3, 4)], "b": [torch.rand(3, 4)]}
    quartet = Quartet(3, [0.1 * k for k in range(6)], [[0.1 * k, 0.3, 1 / 3] for k in range(6)], 7, 9, 0.3125)
    cmp = SubtaskComparison(("a", "b"), ab=[GraphComparison(0.5, 0.25, [0.1, 0.2, 0.3], None)],
                            baseline=[GraphComparison(0.75, 0.5, [0.4, 0.5, 0.6], 0.125)], quartets=[quartet],
                            head_activity={s: torch.stack(v).mean(0) for s, v in acts.items()},
                            completeness=1.5e-7, rows=[{"sample": 3, "query": "big", "ab_weighted_jaccard": 0.5,
                                                        "x": np.float32(0.25)}],
                            example=[{"subtask": "a", "rank": 0, "value": -1.25}], head_samples=acts)
    run = RunDir.create("trace", "parts", out=tmp_path / "run")
    run.write_part("parts", "m0-s00003", *cmp.to_part())
    assert run.has_part("parts", "m0-s00003")
    assert sorted(p.suffix for p in (tmp_path / "run" / "parts").iterdir()) == [".json", ".safetensors"]
    back = SubtaskComparison.from_part(*run.read_part("parts", "m0-s00003"))
    assert back.subtasks == cmp.subtasks and back.ab == cmp.ab and back.baseline == cmp.baseline
    assert back.quartets == [quartet]
    assert back.completeness == cmp.completeness and back.example == cmp.example
    assert back.rows == [{**cmp.rows[0], "x": 0.25}]
    for s in acts:
        assert torch.equal(back.head_activity[s], cmp.head_activity[s])
        assert all(torch.equal(x, y) for x, y in zip(back.head_samples[s], cmp.head_samples[s], strict=True))


def test_a_part_of_an_older_ivlens_is_refused_in_one_line(tmp_path):
    """A part written before the quartets (two rephrasings of A traced, none of B) cannot feed the selectivity
    statistics: resuming or merging it says so instead of failing on a missing key."""
    from ivlens.tracing.compare import SubtaskComparison
    from ivlens.tracing.surrogate import TracingError

    data, tensors = SubtaskComparison(("a", "b")).to_part()
    del data["quartets"]
    with pytest.raises(TracingError, match="older ivlens .* start a new run"):
        SubtaskComparison.from_part(data, tensors)
