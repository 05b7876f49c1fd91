"""Linear read-outs ``y = w · resid_l[t]``: exact decomposition at any layer and position, on every architecture.

The real value is checked against an independent plain-PyTorch forward (HF ``output_hidden_states``; for the last
block, whose HF hidden state is already normed, the final norm's input caught by a plain pre-hook)."""

from __future__ import annotations

import json

import pytest
import torch

from ivlens.models.adapters import get_adapter
from ivlens.testing.tiny import ARCHS, TINY_WINDOW, tiny_model
from ivlens.tracing import TracingError, argmax_trace, graph_to_json
from ivlens.tracing.graph import compute_graph, cut_totals
from ivlens.tracing.paths import path_value, top_paths
from ivlens.tracing.surrogate import Target, backward, build_surrogate, frozen_forward, readout, scoped

N_POS = 9  # longer than the sliding window


def _ids(n: int = N_POS) -> torch.Tensor:
    return torch.randint(5, 300, (n,), generator=torch.Generator().manual_seed(0))


def _hf_resid(model, ids: torch.Tensor) -> torch.Tensor:
    """``[layer, pos, d_model]``: the residual after every block from plain HF outputs (no ivlens hook)."""
    final = get_adapter(model).final_norm
    caught = {}

    def catch(_mod, args) -> None:
        caught["x"] = args[0][0].detach().float()
    handle = final.register_forward_pre_hook(catch)
    try:
        with torch.no_grad():
            hs = model(ids[None], output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    # hidden_states[l + 1] is block l's output, except the last one, which HF returns after the final norm
    return torch.stack([h[0].float() for h in hs[1:-1]] + [caught["x"]])


def _direction(resid: torch.Tensor, layer: int, pos: int, seed: int = 5) -> torch.Tensor:
    """A direction with a value of the order of ``‖w‖ ‖x‖`` (a random one nearly cancels: relative errors then
    measure the cancellation, not the tracer): the state's own direction plus noise."""
    x = resid[layer, pos]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return x / x.norm() + 0.5 * noise / noise.norm()


@pytest.fixture(scope="module", params=ARCHS)
def case(request):
    model = tiny_model(request.param, seed=1)
    ids = _ids()
    return model, ids, build_surrogate(model, ids), _hf_resid(model, ids)


def test_readout_is_exact_at_every_layer_and_position(case):
    """Σ contributions = w · resid_l[t] of the unfrozen model within 1e-4 relative, at every layer, at three
    positions; every cut too; the graph has l + 1 layers; real equals the plain HF forward's value."""
    model, _, sur, hf = case
    for layer in range(sur.n_layers):
        for pos in (0, 4, N_POS - 1):
            w = _direction(hf, layer, pos)
            tgt = Target.readout(w, layer, pos, name="test")
            g = compute_graph(sur, tgt)
            reference = float(w.double() @ hf[layer, pos].double())
            assert g.real == pytest.approx(reference, rel=1e-5, abs=1e-6)
            assert abs(g.value - g.real) <= 1e-4 * abs(g.real), (layer, pos, g.value, g.real)
            assert g.n_layers == layer + 1 and g.final_bias == 0.0
            torch.testing.assert_close(cut_totals(g), torch.full((scoped(sur, tgt).n_states,), g.real,
                                                                 dtype=cut_totals(g).dtype), rtol=1e-4, atol=0)


def test_later_positions_contribute_nothing(case):
    """Causal attention: no edge lands after the read-out position, no source after it contributes."""
    _, _, sur, hf = case
    pos = 3
    g = compute_graph(sur, Target.readout(_direction(hf, 1, pos), 1, pos))
    assert float(g.head[:, :, pos + 1:].abs().max()) == 0.0
    assert float(g.embed[pos + 1:].abs().max()) == 0.0
    assert float(g.mlp[:, pos + 1:].abs().max()) == 0.0


def test_readout_backward_matches_autograd(case):
    _, _, sur, hf = case
    tgt = Target.readout(_direction(hf, 2, 5), 2, 5)
    cut = scoped(sur, tgt)
    x0 = cut.x0.clone().requires_grad_(True)
    states = frozen_forward(cut, x0)
    y = readout(cut, tgt, states[-1])
    for a, b in zip(torch.autograd.grad(y, states), backward(sur, tgt), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("arch", ["olmo2", "gpt_neox", "gemma2", "olmo"])
def test_all_readout_paths_sum_to_the_value(arch):
    """An unbounded beam enumerates every path into resid_l[t]; they sum to y and each is exact forwards."""
    model = tiny_model(arch, seed=2, n_layers=3, d_model=32, n_heads=2)
    ids = _ids(TINY_WINDOW + 1)
    sur = build_surrogate(model, ids)
    tgt = Target.readout(_direction(sur.real_resid, 1, 2), 1, 2)
    paths = top_paths(sur, tgt, k=10**6, beam=10**6)
    assert sum(p.value for p in paths) == pytest.approx(compute_graph(sur, tgt).real, rel=1e-4)
    assert max(h.layer for p in paths for h in p.hops) <= 1
    assert {p.source for p in paths} <= {"embed", "pos_embed", "attn_bias", "mlp_bias"}
    for p in paths[:30]:
        assert path_value(sur, tgt, p) == pytest.approx(p.value, rel=1e-4, abs=1e-8)


def test_graph_json_says_what_was_read():
    model = tiny_model("llama", seed=1)
    sur = build_surrogate(model, _ids())
    w = _direction(sur.real_resid, 1, 4)
    data = json.loads(json.dumps(graph_to_json(compute_graph(sur, Target.readout(w, 1, 4, name="probe x")))))
    assert data["target"]["definition"] == "readout" and data["target"]["coef"] == []
    assert data["target"]["readout"] == {"layer": 1, "pos": 4, "name": "probe x",
                                         "norm": pytest.approx(float(w.double().norm()))}
    assert data["n_layers"] == 2
    assert all(e["kind"] != "final_bias" for e in data["edges"])


def test_bad_readouts_are_refused():
    model = tiny_model("llama", seed=1)
    sur = build_surrogate(model, _ids())
    with pytest.raises(TracingError, match="d_model is 64"):
        compute_graph(sur, Target.readout(torch.ones(10), 1, 4))
    with pytest.raises(TracingError, match="outside a model of 4 layers"):
        compute_graph(sur, Target.readout(torch.ones(64), 4, 4))
    with pytest.raises(TracingError, match="--method exact"):
        argmax_trace(sur, Target.readout(torch.ones(64), 1, 4))
    with pytest.raises(ValueError, match="from 0"):
        Target.readout(torch.ones(64), -1, 4)
