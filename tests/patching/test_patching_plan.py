"""Patch plans and metrics: layer-set and position specs, errors, the metric definitions."""

from __future__ import annotations

import itertools
from math import comb

import pytest
import torch

from ivlens.patching.metrics import deltas, label_metrics
from ivlens.patching.plan import PatchPlan, PlanError, parse_layer_sets, parse_positions, resolve_position


@pytest.mark.parametrize("spec,n", [("single", 6), ("pairs", 6 + 15), ("triplets", 6 + 15 + 20)])
def test_named_layer_specs(spec, n):
    sets = parse_layer_sets(spec, 6)
    assert len(sets) == n and len(set(sets)) == n
    assert all(list(s) == sorted(s) for s in sets)
    assert [len(s) for s in sets] == sorted(len(s) for s in sets)


def test_triplets_of_16_layers_is_the_papers_count():
    assert len(parse_layer_sets("triplets", 16)) == comb(16, 3) + comb(16, 2) + 16 == 696


def test_explicit_list_adds_singles_and_sorts():
    assert parse_layer_sets("7,3,5;2,4", 8) == ((2,), (3,), (4,), (5,), (7,), (2, 4), (3, 5, 7))


@pytest.mark.parametrize("spec,msg", [("1,9", "valid indices 0 to 5"), ("-1", "valid indices 0 to 5"),
                                      ("2,2", "repeats"), ("a,b", "cannot read"), (";", "empty")])
def test_bad_layer_specs(spec, msg):
    with pytest.raises(PlanError, match=msg):
        parse_layer_sets(spec, 6)


def test_positions():
    assert parse_positions("first,last,-2,3") == ("first", "last", -2, 3)
    with pytest.raises(PlanError, match="unknown position"):
        parse_positions("middle")
    with pytest.raises(PlanError, match="repeats"):
        parse_positions("last,last")
    assert resolve_position("first", 5) == 0
    assert resolve_position("first", 5, has_bos=True) == 1
    assert resolve_position("last", 5) == 4
    assert resolve_position(-2, 5) == 3
    assert resolve_position("t_inst", 9, t_inst=6) == 6
    assert resolve_position("bos", 5, has_bos=True) == 0
    with pytest.raises(PlanError, match="BOS"):
        resolve_position("bos", 5)
    with pytest.raises(PlanError, match="valid -5 to 4"):
        resolve_position(5, 5)
    with pytest.raises(PlanError, match="contrastive"):
        resolve_position("t_inst", 5)


def test_plan_rows_and_dict():
    plan = PatchPlan.build("pairs", "first,last", n_layers=4)
    assert len(plan.rows) == 2 * (4 + 6)
    assert plan.rows[0].position == "first" and plan.rows[-1].layers == (2, 3)
    d = plan.to_dict()
    assert d["layer_sets"][:4] == ["0", "1", "2", "3"] and d["positions"] == ["first", "last"]


def test_label_metrics_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [5.0, 1.0, 1.0, 0.0]])
    label = torch.tensor([2, 1])
    alt = torch.tensor([1, -1])
    m = label_metrics(logits, label, alt, space=torch.tensor([0, 2]))
    assert m["logit"].tolist() == [2.0, 1.0]
    p0 = torch.softmax(logits[0], -1)[2].item()
    assert m["prob"][0].item() == pytest.approx(p0)
    assert m["rank"].tolist() == [2, 2]  # row 1: a tie with token 2 counts in the label's favour
    assert m["rr"].tolist() == [0.5, 0.5]
    assert m["top1"].tolist() == [1, 0] and m["acc_top1"].tolist() == [False, False]
    assert m["acc_space"].tolist() == [True, False]  # within {0, 2}: row 0 picks 2 (the label), row 1 picks 0
    # the top-1 token (1, 0) lies in the label space {0, 2} only in row 1
    assert m["ia_top1"].tolist() == [False, True]
    assert m["logit_diff"][0].item() == -1.0 and torch.isnan(m["logit_diff"][1])
    d = deltas(m, label_metrics(logits + 1.0, label, alt), "target")
    assert d["delta_logit_vs_target"].tolist() == [-1.0, -1.0]
    assert d["delta_rank_vs_target"].tolist() == [0.0, 0.0]


def test_n_sets_are_every_set_up_to_n_layers():
    from ivlens.patching.plan import max_set_size

    assert parse_layer_sets("4-sets", 8) == tuple(s for k in range(1, 5) for s in itertools.combinations(range(8), k))
    assert len(parse_layer_sets("4-sets", 32)) == 32 + comb(32, 2) + comb(32, 3) + comb(32, 4)
    assert parse_layer_sets("3-sets", 6) == parse_layer_sets("triplets", 6)
    assert parse_layer_sets("1-sets", 6) == parse_layer_sets("single", 6)
    assert max_set_size("pairs") == 2 and max_set_size("0,1") is None
    with pytest.raises(PlanError, match="need at least 5 layers"):
        parse_layer_sets("5-sets", 4)
    with pytest.raises(PlanError, match="N-sets needs a whole number"):
        parse_layer_sets("x-sets", 4)
    assert PatchPlan.build("4-sets", "first", 6).with_layer_sets(((1, 2), (0,))).layer_sets == ((0,), (1, 2))
