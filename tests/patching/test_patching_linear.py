"""The linear estimate of every patch (:mod:`ivlens.patching.linear`): a finite-difference derivative of the exact
engine on every tiny architecture, an independent hook-based gradient of the unmodified HF model, and the sweep's
``linear_estimate`` / ``nonlinearity`` columns."""

from __future__ import annotations

import itertools

import numpy as np
import patching_reference as ref
import pytest
import torch

from ivlens.models.adapters import get_adapter
from ivlens.models.load import LoadedModel
from ivlens.patching.engine import RowSpec, clean_run, patched_logits, source_vectors
from ivlens.patching.linear import first_order_terms, set_sums
from ivlens.patching.sweep import patch_sweep
from ivlens.tasks import load_task
from ivlens.testing.tiny import ARCHS, tiny_model, tiny_tokenizer
from ivlens.units import unit_key

TARGETS = [(5, 6, 7, 8, 9, 10), (11, 12, 13, 14)]
SOURCE = (30, 31, 32, 33)
LABEL, ALT = torch.tensor([50, 60]), torch.tensor([51, -1])
SETS = [c for k in range(1, 5) for c in itertools.combinations(range(4), k)]


def _model(arch: str, dtype=torch.float64):
    kv = None if arch in ("gpt2", "gpt_neox") else 2
    return tiny_model(arch, seed=0, n_layers=4, d_model=64, n_heads=4, n_kv_heads=kv).to(dtype)


def _close(est: np.ndarray, fd: np.ndarray, scale: float) -> None:
    """Every value within 1e-3 of its estimate, relative to ``|estimate| + scale`` (the rms of the target's
    estimates: values far below the target's scale are compared at that scale, where HF's float32 internals
    (RMSNorm and softmax cast to float32 even in a float64 model) leave ~1e-7 of noise in every logit)."""
    bad = np.abs(fd - est) > 1e-3 * (np.abs(est) + scale)
    assert not bad.any(), (est[bad], fd[bad])


@pytest.mark.parametrize("arch", ARCHS)
def test_estimate_is_the_engines_finite_difference_derivative(arch):
    """``d/dε effect(clean + ε Δ)`` at 0, by a six-point central difference of the exact engine's additive edit
    (steps ±ε, ±2ε, ±3ε; ε = 0.02), equals the estimate of every layer set (singles to all four layers) at three
    positions to 1e-3 relative (float64), for the logit and the logit difference.

    In float64 a left-padded batch gives NaN (HF's eager attention takes the softmax in float32, where the mask's
    float64 minimum is -inf), so every target runs alone. OLMo-1's q/k/v clamp is raised so that it never binds:
    at a clamp's kink a central difference averages two one-sided slopes (the gradient through the binding clamp
    is checked against the HF model's own autograd in :func:`test_gradients_match_hooks_on_the_hf_model`)."""
    model = _model(arch)
    if arch == "olmo":
        model.config.clip_qkv = 1e3
    adapter = get_adapter(model)
    iv = source_vectors(adapter, [SOURCE], pad_id=1)[0]  # [layer, d_model]
    positions = [(0, 2, len(t) - 1) for t in TARGETS]
    fo = first_order_terms(adapter, TARGETS, positions, iv, LABEL, ALT)
    est, est_diff = set_sums(fo.logit, SETS), set_sums(fo.logit_diff, SETS)  # [target, position, set]
    eps, weights = 0.02, {1: 45 / 60, 2: -9 / 60, 3: 1 / 60}  # f'(0) ≈ Σ_k w_k (f(kε) − f(−kε)) / ε
    for t, tgt in enumerate(TARGETS):
        clean = clean_run(adapter, [tgt], pad_id=1)
        rows = [RowSpec(0, pi, s, p) for pi, p in enumerate(positions[t]) for s in SETS]
        slope = 0
        for k, w in weights.items():
            for sign in (1, -1):
                # one "source" per position: kε Δ_l = kε (iv_l − clean_l[p]) at every layer, added by the engine
                vecs = torch.stack([torch.stack([sign * k * eps * (iv[j] - clean.resid[j][0, p]) for j in range(4)])
                                    for p in positions[t]])
                slope = slope + sign * w * patched_logits(adapter, clean, vecs, rows, edit="add") / eps  # [rows, vocab]
        got = slope[:, LABEL[t]].numpy().reshape(est[t].shape)
        _close(est[t], got, np.sqrt((est[t] ** 2).mean()))
        if ALT[t] >= 0:
            got_diff = (slope[:, LABEL[t]] - slope[:, ALT[t]]).numpy().reshape(est[t].shape)
            _close(est_diff[t], got_diff, np.sqrt((est_diff[t] ** 2).mean()))
        else:
            assert np.isnan(est_diff[t]).all()
    assert np.abs(est).max() > 1e-2  # a real signal, not zeros agreeing with zeros


@pytest.mark.parametrize("arch", ["olmo2", "gpt2", "gemma2", "olmo"])
def test_gradients_match_hooks_on_the_hf_model(arch):
    """The engine-side gradient against an independent one: forward hooks on the unmodified HF model add a zero
    leaf at the patched position, autograd gives ``∂z_y/∂resid_post[l][t]``."""
    model = _model(arch)
    adapter = get_adapter(model)
    iv = source_vectors(adapter, [SOURCE], pad_id=1)[0]
    positions = [(1, len(t) - 1) for t in TARGETS]
    fo = first_order_terms(adapter, TARGETS, positions, iv, LABEL)
    assert all(p.requires_grad for p in model.parameters())  # the weights' flags are restored
    ref_ivs = ref.source_ivs(model, SOURCE)
    for t, tgt in enumerate(TARGETS):
        for pi, p in enumerate(positions[t]):
            want = ref.first_order_terms(model, tgt, ref_ivs, p, int(LABEL[t]))
            np.testing.assert_allclose(fo.logit[t, pi], want, rtol=1e-9, atol=1e-12)


def test_set_sums_add_the_layers_terms():
    terms = np.arange(2 * 3 * 5, dtype=float).reshape(2, 3, 5) ** 1.5
    sets = [(0,), (4,), (1, 3), (0, 2, 4), (0, 1, 2, 3)]
    out = set_sums(terms, sets)
    for j, s in enumerate(sets):
        np.testing.assert_allclose(out[..., j], terms[..., list(s)].sum(-1))


def test_a_repeated_position_gets_its_gradient_twice():
    """``first`` and ``last`` of a one-token target are one position: both columns carry its full estimate."""
    model = _model("llama")
    adapter = get_adapter(model)
    iv = source_vectors(adapter, [SOURCE], pad_id=1)[0]
    fo = first_order_terms(adapter, [(20,), (20,)], [(0, 0), (0,) * 2], iv, torch.tensor([50, 50]))
    single = first_order_terms(adapter, [(20,)], [(0,)], iv, torch.tensor([50]))
    np.testing.assert_allclose(fo.logit[0, 0], single.logit[0, 0], rtol=1e-12)
    np.testing.assert_allclose(fo.logit[0, 1], single.logit[0, 0], rtol=1e-12)


@pytest.mark.parametrize("arch", ["qwen2", "gpt_neox"])
def test_sweep_rows_carry_the_estimate(arch):
    """The sweep's columns: ``linear_estimate`` equals the independent hook-based gradient's sum over the set,
    ``nonlinearity = delta_logit_vs_target − linear_estimate``, and the logit-difference pair likewise."""
    task = load_task("adjectives")
    tok = tiny_tokenizer()
    model = _model(arch, torch.float32)
    lm = LoadedModel.wrap(model, tok, arch)
    res = patch_sweep(lm, task, "adj_ant", layers="pairs", positions="first,last", samples=[0, 3], target="formatted")
    rows = res.rows
    for c in ("linear_estimate", "nonlinearity", "linear_estimate_logit_diff", "nonlinearity_logit_diff"):
        assert c in rows and rows[c].notna().all(), c
    np.testing.assert_allclose(rows.nonlinearity, rows.delta_logit_vs_target - rows.linear_estimate, atol=1e-9)
    np.testing.assert_allclose(rows.nonlinearity_logit_diff,
                               rows.delta_logit_diff_vs_target - rows.linear_estimate_logit_diff, atol=1e-9)
    want = ref.reference_estimates(model, tok, task, "adj_ant", [0, 3], ["first", "last"], "formatted")
    for r in rows.itertuples():
        terms = want[(r.sample, r.position)]
        layers = [int(x) for x in r.layers.split(",")]
        assert r.linear_estimate == pytest.approx(sum(terms["logit"][layers]), rel=1e-4, abs=1e-5)
        assert r.linear_estimate_logit_diff == pytest.approx(sum(terms["logit_diff"][layers]), rel=1e-4, abs=1e-5)
    # a single layer's estimate is close to its effect where the patch is small; the columns are not constant
    assert rows.linear_estimate.std() > 0
    off = patch_sweep(lm, task, "adj_ant", layers="pairs", samples=[0, 3], target="formatted", linear_estimate="off")
    assert "linear_estimate" not in off.rows
    cols = [c for c in off.rows.columns]
    assert rows[cols].equals(off.rows)  # the estimate changes no other column


# ------------------------------------------------------------------------------------------------ screen
def test_screen_table_ranks_by_absolute_mean_estimate_per_position_and_size():
    from ivlens.patching.screen import screen_table, screened_sets

    sets = [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    est = np.zeros((3, 2, len(sets)))  # [samples, positions, sets]
    est[:, 0, 3:6] = [0.1, -0.5, 0.3]  # first: (0,2) by |mean|, then (1,2), then (0,1)
    est[:, 1, 3:6] = [0.4, 0.0, -0.2]  # last: (0,1), then (1,2)
    est[:, :, 6] = 1.0
    t = screen_table(est, sets, ["first", "last"], 1, "m", "delta_logit_vs_target")
    rank = t.set_index(["position", "layers"])["rank"]
    assert rank["first", "0,2"] == 1 and rank["first", "1,2"] == 2 and rank["first", "0,1"] == 3
    assert rank["last", "0,1"] == 1 and rank["last", "1,2"] == 2 and rank["first", "0,1,2"] == 1
    sel = t.set_index(["position", "layers"])["selected"]
    assert sel["first", "0,2"] and not sel["first", "0,1"] and sel["last", "0,1"] and sel["first", "1"]
    # every position runs the union of the positions' top K, and every single
    assert screened_sets(t, sets) == ((0,), (1,), (2,), (0, 1), (0, 2), (0, 1, 2))
    assert t.estimate_mean.tolist()[:7] == pytest.approx([0, 0, 0, 0.1, -0.5, 0.3, 1.0])


def test_run_estimates_rank_the_last_position_by_the_highest_layer():
    """At the target's last token the engine runs (S, last) as ({max S}, last): the screen ranks that."""
    from ivlens.patching.screen import run_estimates

    terms = np.array([[[1.0, 2.0, 4.0], [1.0, 2.0, 4.0]], [[8.0, 16.0, 32.0], [8.0, 16.0, 32.0]]])  # [2, 2, 3]
    sets = [(1,), (0, 1), (0, 1, 2)]
    is_last = np.array([[False, True], [True, False]])
    out = run_estimates(terms, sets, is_last)
    np.testing.assert_array_equal(out[0, 0], [2, 3, 7])
    np.testing.assert_array_equal(out[0, 1], [2, 2, 4])
    np.testing.assert_array_equal(out[1, 0], [16, 16, 32])
    np.testing.assert_array_equal(out[1, 1], [16, 24, 56])


def test_recall_at_k_counts_the_exact_top_k_the_screen_found():
    import pandas as pd

    from ivlens.patching.screen import recall_at_k, screen_table

    sets = [(0,), (1,), (2,), (3,), (0, 1), (0, 2), (0, 3), (1, 2)]
    est = np.array([[[0, 0, 0, 0, 0.9, -0.8, 0.1, 0.05]]])  # screen's top 2: (0,1), (0,2)
    screen = screen_table(est, sets, ["first"], 2, "m", "delta_logit_vs_target")
    exact = [0, 0, 0, 0, 0.2, 0.1, -0.7, 0.0]  # exact top 2 by |mean|: (0,3), (0,1)
    rows = pd.DataFrame({"model": "m", "position": "first", "sample": 0,
                         "layers": [",".join(map(str, s)) for s in sets], "set_size": [len(s) for s in sets],
                         "delta_logit_vs_target": exact})
    r = recall_at_k(screen, rows).iloc[0]
    assert (r.n_sets, r.k, r.found, r.recall) == (4, 2, 1, 0.5)
    assert r.exact_top == "0,3;0,1" and r.screen_top == "0,1;0,2"
    assert recall_at_k(screen, rows, k=4).iloc[0].recall == 1.0  # every set: found them all
    # ties at the exact K-th value count as found (the last position: sets with one highest layer tie exactly)
    tied = rows.assign(delta_logit_vs_target=[0, 0, 0, 0, 0.2, 0.7, 0.7, 0.0])  # exact top 2: (0,2), (0,3) tied
    r = recall_at_k(screen, tied).iloc[0]
    assert (r.found, r.recall) == (1, 0.5)
    assert recall_at_k(screen, tied.assign(delta_logit_vs_target=[0, 0, 0, 0, 0.7, 0.7, 0.7, 0.0])
                       ).iloc[0].recall == 1.0  # three tied for the top 2: the screen's two are both in it


def test_screened_sweep_runs_the_top_sets_exactly(tmp_path):
    """``--screen 2`` on triplets: the singles and each position's top 2 pairs and triplets run, their rows equal
    the unscreened sweep's; the screen table ranks every set; a resumed run reads the ranking it wrote."""
    from ivlens.runs import RunDir

    task = load_task("adjectives")
    lm = LoadedModel.wrap(tiny_model("olmo2", seed=0, n_layers=5, d_model=64, n_heads=4), tiny_tokenizer(), "m")
    kw = {"layers": "triplets", "samples": 4, "chunk_size": 2, "target": "formatted"}
    full = patch_sweep(lm, task, "adj_ant", **kw)
    run = RunDir.create("patch", "screen", out=tmp_path / "run")
    res = patch_sweep(lm, task, "adj_ant", screen=2, run=run, **kw)
    sc = res.screen
    assert len(sc) == 2 * (5 + 10 + 10) and sc["rank"].min() == 1
    kept = set(sc.loc[sc["run"], "layers"])
    assert {s for s in kept if "," not in s} == {str(i) for i in range(5)}
    for pos in ("first", "last"):
        for size in (2, 3):
            top = sc[(sc.position == pos) & (sc.set_size == size) & (sc["rank"] <= 2)]
            assert set(top.layers) <= kept
    assert len(kept) <= 5 + 2 * 2 * 2
    assert set(res.rows.layers) == kept and len(res.rows) == 4 * 2 * len(kept)
    key = ["sample", "position", "layers"]
    want = full.rows.set_index(key).loc[res.rows.set_index(key).index]
    np.testing.assert_allclose(res.rows.logit, want.logit, atol=1e-5)
    np.testing.assert_allclose(res.rows.linear_estimate, want.linear_estimate, rtol=0, atol=0)
    # the ranking is the estimate's: the screen's mean per set is the full sweep's mean linear estimate, at the
    # last position that of the set's highest layer (the engine runs (S, last) as ({max S}, last))
    means = full.rows.groupby(["position", "layers"]).linear_estimate.mean()
    at = [(p, s if p != "last" else s.split(",")[-1]) for p, s in zip(sc.position, sc.layers, strict=True)]
    np.testing.assert_allclose(sc.estimate_mean, means.loc[at].to_numpy(), atol=1e-12)
    assert (full.rows.pos_index < full.rows.n_tokens - 1)[full.rows.position == "first"].all()
    # resume after losing a chunk: the same rows, the ranking read back from the run
    (run.path / "patch" / f"shard-{unit_key(0, 'c', 1)}.parquet").unlink()
    again = patch_sweep(lm, task, "adj_ant", screen=2, run=RunDir.open(run.path), **kw)
    import pandas as pd

    pd.testing.assert_frame_equal(again.rows, res.rows)
    pd.testing.assert_frame_equal(again.screen, res.screen)


@pytest.mark.parametrize("kwargs,msg", [
    ({"screen": 2, "linear_estimate": "off"}, "drop --linear-estimate off"),
    ({"screen": 2, "score": "answer"}, "drop --score answer"),
    ({"linear_estimate": "on", "score": "answer"}, "drop --score answer"),
    ({"screen": 2, "layers": "single"}, "two or more layers"),
    ({"screen": 2, "layers": "2"}, "two or more layers"),
    ({"linear_estimate": "maybe"}, "unknown --linear-estimate"),
])
def test_sweep_refuses_an_estimate_it_cannot_give(kwargs, msg):
    lm = LoadedModel.wrap(_model("llama", torch.float32), tiny_tokenizer(), "m")
    with pytest.raises(ValueError, match=msg):
        patch_sweep(lm, load_task("adjectives"), "adj_ant", samples=1, **{"layers": "pairs", **kwargs})


def test_auto_is_off_for_singles_and_the_answer_score():
    task = load_task("adjectives")
    lm = LoadedModel.wrap(_model("llama", torch.float32), tiny_tokenizer(), "m")
    assert "linear_estimate" not in patch_sweep(lm, task, "adj_ant", layers="single", samples=1).rows
    assert "linear_estimate" in patch_sweep(lm, task, "adj_ant", layers="single", samples=1,
                                            linear_estimate="on").rows


def test_spec_options_and_hash():
    from ivlens.patching import PatchSpec
    from ivlens.specs import SpecError

    base = PatchSpec(models=("m",), layers="triplets")
    assert "linear_estimate" not in base.result_fields() and "screen" not in base.result_fields()
    assert base.hash() != PatchSpec(models=("m",), layers="triplets", screen=5).hash()
    assert base.hash() != PatchSpec(models=("m",), layers="triplets", linear_estimate="off").hash()
    for kw, msg in (({"screen": 3, "layers": "single"}, "--screen ranks sets of two or more layers"),
                    ({"screen": 3, "linear_estimate": "off"}, "drop --linear-estimate off"),
                    ({"screen": 0}, "--screen"), ({"linear_estimate": "yes"}, "--linear-estimate"),
                    ({"linear_estimate": "on", "remote": True, "models": ("org/m",)}, "drop --remote")):
        with pytest.raises(SpecError, match=msg):
            PatchSpec(**{"models": ("m",), "layers": "pairs", **kw})


def test_dry_run_counts_the_estimate_and_shows_the_screens_saving():
    from pathlib import Path

    from ivlens.patching.dry_run import patch_costs

    cfg = [str(Path(__file__).parents[1] / "data" / "olmo2-0425-1b-config")]  # 16 layers
    kw = {"positions": "first,last", "samples": 2, "target": "formatted"}  # several tokens: sets do not collapse
    full = patch_costs(cfg, "adjectives", "adj_ant", layers="4-sets", **kw)[0]
    off = patch_costs(cfg, "adjectives", "adj_ant", layers="4-sets", linear_estimate="off", **kw)[0]
    scr = patch_costs(cfg, "adjectives", "adj_ant", layers="4-sets", screen=10, **kw)[0]
    n_sets = 16 + 120 + 560 + 1820
    assert full.counts["layer_sets"] == n_sets and full.counts["gradient_passes"] == 2
    assert "gradient_passes" not in off.counts and off.flops < full.flops
    assert scr.counts["ranked_sets"] == n_sets and scr.counts["layer_sets"] == 16 + 3 * 20
    assert scr.counts["rows"] == 2 * 2 * (16 + 60) and scr.flops < full.flops / 5
    assert any("--screen 10" in n for n in scr.notes)



@pytest.mark.parametrize("arch", ["olmo2", "gpt2"])
def test_a_targets_terms_do_not_depend_on_its_company(arch):
    """Each target runs alone, so its terms are bit for bit the same whichever targets share the call (a chunk, a
    shard): float32, the main job's dtype, where a shared batch would change the last bits (a batched GEMM sums in
    another order)."""
    model = _model(arch, torch.float32)
    adapter = get_adapter(model)
    iv = source_vectors(adapter, [SOURCE], pad_id=1)[0]
    targets = [(5, 6, 7, 8, 9), (11, 12, 13, 14, 15), (16, 17, 18), (19, 20, 21, 22, 23)]
    positions = [(0, 1, len(t) - 1) for t in targets]
    label, alt = torch.tensor([50, 60, 70, 80]), torch.tensor([51, -1, 71, 81])
    together = first_order_terms(adapter, targets, positions, iv, label, alt)
    for i in range(len(targets)):
        alone = first_order_terms(adapter, [targets[i]], [positions[i]], iv, label[[i]], alt[[i]])
        np.testing.assert_array_equal(together.logit[i], alone.logit[0])
        np.testing.assert_array_equal(together.logit_diff[i], alone.logit_diff[0])
    assert np.isnan(together.logit_diff[1]).all() and not np.isnan(together.logit_diff[[0, 2, 3]]).any()
