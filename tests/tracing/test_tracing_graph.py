"""Attribution graph and top paths: cuts, pruning, restricted sources, exhaustive path sums."""

from __future__ import annotations

import json

import pytest
import torch

from ivlens.testing.tiny import ARCHS, TINY_WINDOW, tiny_model
from ivlens.tracing.graph import compute_graph, cut_totals, edge_list, graph_to_json, source_mask
from ivlens.tracing.paths import path_value, top_paths
from ivlens.tracing.surrogate import Target, build_surrogate, frozen_forward, readout


def _sur(arch: str, n_layers: int = 2, n_pos: int = TINY_WINDOW + 2, **kw):
    model = tiny_model(arch, seed=2, n_layers=n_layers, d_model=32, n_heads=2, **kw)
    ids = torch.randint(5, 300, (n_pos,), generator=torch.Generator().manual_seed(1))
    return build_surrogate(model, ids)


@pytest.mark.parametrize("arch", ARCHS)
def test_restricted_sources_cuts(arch):
    """Edges of paths leaving positions 1..2 sum, at every cut, to the frozen map fed those embeddings only."""
    sur = _sur(arch, n_layers=3)
    tgt = Target.diff(11, 12)
    mask = source_mask(sur.n_pos, 1, 2)
    g = compute_graph(sur, tgt, mask)
    x0 = sur.x0 * mask[:, None]
    ref = float(readout(sur, tgt, frozen_forward(sur, x0, with_bias=False)[-1], with_bias=False))
    assert not g.with_bias
    assert g.value == pytest.approx(ref, rel=1e-4)
    torch.testing.assert_close(cut_totals(g), torch.full((sur.n_states,), ref), rtol=1e-4, atol=1e-7)


def test_source_mask():
    assert source_mask(5, 1, 2).tolist() == [False, True, True, False, False]
    assert source_mask(5, -1).tolist() == [False, False, False, False, True]
    with pytest.raises(IndexError):
        source_mask(5, 3, 1)


def test_edge_list_pruning_and_json():
    sur = _sur("gpt2")
    g = compute_graph(sur, Target.logit(7))
    top = edge_list(g, top_k=5)
    assert len(top) == 5
    assert [abs(e.value) for e in top] == sorted((abs(e.value) for e in top), reverse=True)
    # the largest head edge is the argmax of the dense tensor
    best_head = next(e for e in edge_list(g) if e.kind == "head")
    assert best_head.value == pytest.approx(float(g.head.flatten()[g.head.abs().argmax()]))
    assert g.head[best_head.layer, best_head.head, best_head.dst, best_head.src] == pytest.approx(best_head.value)
    thr = edge_list(g, threshold=0.1)
    assert all(abs(e.value) >= 0.1 * abs(g.value) for e in thr)
    assert all(e.kind != "attn_skip" for e in edge_list(g))
    data = json.loads(json.dumps(graph_to_json(g, top_k=20)))
    assert data["schema"] == "ivlens.tracing.graph/1" and len(data["edges"]) == 20
    assert data["completeness_rel_err"] < 1e-4
    # edges are never closer than src <= dst (causal)
    assert all(e["src"] <= e["dst"] for e in data["edges"])


@pytest.mark.parametrize("arch", ARCHS)
def test_all_paths_sum_to_logit(arch):
    """With an unbounded beam the search enumerates every path; they sum to y, each value checked forwards."""
    sur = _sur(arch, n_pos=TINY_WINDOW + 1, n_kv_heads=1)  # MQA where the family has it; the window bites
    tgt = Target.logit(19)
    paths = top_paths(sur, tgt, k=10**6, beam=10**6)
    g = compute_graph(sur, tgt)
    assert sum(p.value for p in paths) == pytest.approx(g.real, rel=1e-4)
    for p in paths[:50]:
        assert path_value(sur, tgt, p) == pytest.approx(p.value, rel=1e-4, abs=1e-8)
    # each path is unique
    keys = {(p.source, p.layer, p.pos, p.hops) for p in paths}
    assert len(keys) == len(paths)
    # the paths through one head edge sum to that edge's graph contribution
    e = next(e for e in edge_list(g) if e.kind == "head")
    through = sum(p.value for p in paths if any(h.kind == "head" and (h.layer, h.head, h.src, h.dst) ==
                                                (e.layer, e.head, e.src, e.dst) for h in p.hops))
    assert through == pytest.approx(e.value, rel=1e-4, abs=1e-8)
    # the paths through one MLP edge too
    e = next(e for e in edge_list(g) if e.kind == "mlp")
    through = sum(p.value for p in paths if any(h.kind == "mlp" and (h.layer, h.dst) == (e.layer, e.dst)
                                                for h in p.hops))
    assert through == pytest.approx(e.value, rel=1e-4, abs=1e-8)
    if sur.parallel:  # one step per layer: never a head and the MLP of the same layer
        assert all(len({h.layer for h in p.hops}) == len(p.hops) for p in paths)
        assert any(h.kind == "mlp" for p in paths for h in p.hops)


@pytest.mark.parametrize("arch", ["olmo2", "gpt_neox", "gemma2"])
def test_restricted_paths_and_merged_mlp(arch):
    sur = _sur(arch, n_pos=4)
    tgt = Target.logit(3)
    restricted = top_paths(sur, tgt, k=10**6, beam=10**6, start_pos=2, end_pos=2)
    assert {p.pos for p in restricted} == {2} and all(p.source == "embed" for p in restricted)
    assert sum(p.value for p in restricted) == pytest.approx(compute_graph(sur, tgt, source_mask(4, 2, 2)).value, rel=1e-4)
    merged = top_paths(sur, tgt, k=10**6, beam=10**6, merge_mlp=True)
    assert all(h.kind == "head" for p in merged for h in p.hops)
    assert sum(p.value for p in merged) == pytest.approx(compute_graph(sur, tgt).real, rel=1e-4)
    if sur.parallel:
        assert all(len({h.layer for h in p.hops}) == len(p.hops) for p in merged)
    for p in merged[:20]:
        assert path_value(sur, tgt, p) == pytest.approx(p.value, rel=1e-4, abs=1e-8)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_beam_finds_the_top_paths(arch):
    """A narrow beam's best path equals the best of the exhaustive enumeration on a small model."""
    sur = _sur(arch, n_layers=2, n_pos=5)
    tgt = Target.logit(42)
    exhaustive = top_paths(sur, tgt, k=5, beam=10**6)
    narrow = top_paths(sur, tgt, k=5, beam=64)
    assert narrow[0].value == pytest.approx(exhaustive[0].value)
    assert "→" in narrow[0].describe() or narrow[0].hops == ()


def test_parallel_residual_graph_shape():
    """GPT-NeoX: one state per layer, one skip per layer, L + 1 cuts, and the JSON says so."""
    sur = _sur("gpt_neox", n_layers=3)
    assert sur.parallel and sur.n_states == 4
    g = compute_graph(sur, Target.logit(7))
    assert g.parallel and g.mlp_skip is None and g.attn_skip.shape == (3, sur.n_pos)
    assert cut_totals(g).shape == (4,)
    assert all(e.kind != "mlp_skip" for e in edge_list(g, include_skip=True))
    assert graph_to_json(g)["parallel_residual"] is True


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "olmo2"])
def test_shared_states_and_grads_give_the_same_graphs_and_paths(arch):
    """A trace's full graph, restricted graph and path search computed from one forward and one backward pass of
    the frozen map (as trace --compare does) equal those computed on their own, exactly."""
    from ivlens.tracing.graph import forward_states
    from ivlens.tracing.surrogate import backward

    sur = _sur(arch, n_layers=2, n_pos=6)
    tgt = Target.logit(7)
    states, grads = forward_states(sur, source_mask(sur.n_pos), with_bias=True), backward(sur, tgt)
    for shared, alone in ((compute_graph(sur, tgt, states=states, grads=grads), compute_graph(sur, tgt)),
                          (compute_graph(sur, tgt, source_mask(sur.n_pos, 2, 2), grads=grads),
                           compute_graph(sur, tgt, source_mask(sur.n_pos, 2, 2)))):
        assert shared.value == alone.value
        for name in ("head", "attn_skip", "attn_bias", "mlp", "mlp_bias", "embed"):
            assert torch.equal(getattr(shared, name), getattr(alone, name)), name
    assert top_paths(sur, tgt, k=50, beam=32, states=states) == top_paths(sur, tgt, k=50, beam=32)
