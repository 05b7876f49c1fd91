"""The fast engine against the naive reference (plain hooks, one forward per layer set and position), to 1e-5."""

from __future__ import annotations

import itertools

import patching_reference as ref
import pytest
import torch

from ivlens.models.adapters import get_adapter
from ivlens.models.load import LoadedModel
from ivlens.patching.engine import EngineStats, RowSpec, clean_run, patched_logits, source_vectors
from ivlens.patching.sweep import patch_sweep
from ivlens.tasks import instructed_prompt, instruction_prompt, label_token_ids, load_task, query_prompt
from ivlens.testing.tiny import ARCHS, tiny_model, tiny_tokenizer

TOL = 1e-5


def _model(arch: str, seed: int = 0):
    kv = None if arch in ("gpt2", "gpt_neox") else 2  # grouped-query attention where the architecture has it
    return tiny_model(arch, seed=seed, n_layers=4, d_model=64, n_heads=4, n_kv_heads=kv)


@pytest.fixture(scope="module")
def task():
    return load_task("adjectives")


@pytest.mark.parametrize("arch", ARCHS)
def test_engine_logits_match_reference(arch):
    """Every layer set (singles, pairs, triplets, all four) at every position of prompts of different lengths."""
    model = _model(arch)
    adapter = get_adapter(model)
    targets = [(5, 6, 7, 8, 9, 10), (11, 12, 13), (20,)]
    sources = [(30, 31, 32, 33), (40, 41)]
    clean = clean_run(adapter, targets, pad_id=1)
    ivs = source_vectors(adapter, sources, pad_id=1)
    sets = [c for k in range(1, 5) for c in itertools.combinations(range(4), k)]
    rows = [RowSpec(t, t % 2, s, p) for t in range(3) for s in sets for p in range(len(targets[t]))]
    stats = EngineStats()
    got = patched_logits(adapter, clean, ivs, rows, batch_size=7, stats=stats)
    ref_ivs = [ref.source_ivs(model, s) for s in sources]
    for r, logits in zip(rows, got, strict=True):
        want = ref.patched_logits(model, targets[r.target], ref_ivs[r.source], r.layers, r.token)
        torch.testing.assert_close(logits, want, atol=TOL, rtol=0)
    # The clean run's own logits equal HF's.
    for i, t in enumerate(targets):
        torch.testing.assert_close(clean.last_logits[i], ref.run_logits(model, t), atol=TOL, rtol=0)
    # At most the minimum of layer-token work, Σ (L − 1 − l0)(T − p), was done; exactly that for the distinct
    # computations once (S, last) is identified with ({max S}, last).
    want_min = sum((4 - 1 - r.layers[0]) * (len(targets[r.target]) - r.token) for r in rows)
    assert stats.minimal_evals == want_min
    distinct = {(r.target, r.source, r.layers[-1:] if r.token == len(targets[r.target]) - 1 else r.layers, r.token)
                for r in rows}
    assert stats.unique_rows == len(distinct)
    assert stats.executed_evals < want_min
    # In one batch, layer k runs once per distinct (target, source, position, S ∩ [0, k−1]): the trie's size.
    one = EngineStats()
    got_one = patched_logits(adapter, clean, ivs, rows, batch_size=10_000, stats=one)
    torch.testing.assert_close(got_one, got, atol=1e-6, rtol=0)
    trie = sum(len(targets[t]) - tok
               for k in range(1, 4)
               for (t, src, tok, prefix) in {(t, src, tok, tuple(x for x in ls if x < k)) for t, src, ls, tok in distinct}
               if prefix)
    assert one.executed_evals == trie < sum((4 - 1 - d[2][0]) * (len(targets[d[0]]) - d[3]) for d in distinct)
    # the last-position identity is exact: a set's logits equal its highest layer's alone
    last = {(r.target, r.layers): i for i, r in enumerate(rows) if r.token == len(targets[r.target]) - 1}
    torch.testing.assert_close(got[last[(0, (0, 2, 3))]], got[last[(0, (3,))]], atol=0, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_nnsight_backend_matches_reference(arch):
    """The nnsight backend (the patched-row program ``--remote`` sends, run here: whole batched forwards through
    envoys) gives the same logits as the reference."""
    from ivlens.ndif import local_model
    from ivlens.patching.nnsight_rows import patched_traces

    model = _model(arch)
    adapter = get_adapter(model)
    targets = [(5, 6, 7, 8, 9), (11, 12)]
    clean = clean_run(adapter, targets, pad_id=1)
    ivs = source_vectors(adapter, [(30, 31, 32)], pad_id=1)
    sets = [(0,), (2,), (1, 3), (0, 1, 2)]
    rows = [RowSpec(t, 0, s, p) for t in range(2) for s in sets for p in (0, len(targets[t]) - 1)]
    stats = EngineStats()
    nm = local_model(LoadedModel.wrap(model, tiny_tokenizer(), arch))
    got = torch.cat([logits for _, _, logits in patched_traces(nm, clean.batch, ivs, rows, batch_size=5,
                                                               stats=stats)])
    fast = patched_logits(adapter, clean, ivs, rows)
    ref_ivs = ref.source_ivs(model, (30, 31, 32))
    for r, logits, f in zip(rows, got, fast, strict=True):
        want = ref.patched_logits(model, targets[r.target], ref_ivs, r.layers, r.token)
        torch.testing.assert_close(logits, want, atol=TOL, rtol=0)
        torch.testing.assert_close(f, logits, atol=TOL, rtol=0)
    assert stats.executed_evals == len(rows) * 4 * 5  # no savings: every row runs every layer on the prompt


def test_sweep_backends_agree(task):
    lm = LoadedModel.wrap(_model("qwen2"), tiny_tokenizer(), "q")
    a = patch_sweep(lm, task, "adj_ant", layers="pairs", samples=[3, 4], target="formatted")
    b = patch_sweep(lm, task, "adj_ant", layers="pairs", samples=[3, 4], target="formatted", backend="nnsight")
    assert (a.rows.logit - b.rows.logit).abs().max() < TOL


def test_nnsight_backend_runs_the_remote_program(task):
    """``--backend nnsight`` runs the patched-row program ``--remote`` sends: its rows equal, to the last bit, those
    of the ``--remote`` path run on the same local weights (:func:`ivlens.ndif.local_model`), whose IVs and
    baselines are nnsight traces too."""
    import pandas as pd

    from ivlens.ndif import local_model

    lm = LoadedModel.wrap(_model("qwen2"), tiny_tokenizer(), "q")
    a = patch_sweep(lm, task, "adj_ant", layers="pairs", samples=[3, 4], target="formatted", backend="nnsight",
                    linear_estimate="off")  # the estimate runs on the local engine only
    b = patch_sweep(local_model(lm), task, "adj_ant", layers="pairs", samples=[3, 4], target="formatted")
    pd.testing.assert_frame_equal(a.rows, b.rows, check_exact=True)
    pd.testing.assert_frame_equal(a.baselines, b.baselines, check_exact=True)
    assert a.stats["q"].executed_evals == b.stats["q"].executed_evals > 0
    with pytest.raises(ValueError, match="unknown backend"):
        patch_sweep(lm, task, "adj_ant", samples=1, backend="jax")


def test_engine_deduplicates_identical_rows():
    model = _model("olmo2")
    adapter = get_adapter(model)
    clean = clean_run(adapter, [(20,)], pad_id=1)
    ivs = source_vectors(adapter, [(30, 31)], pad_id=1)
    stats = EngineStats()
    # "first" and "last" of a one-token prompt; and a pair at the last position equals its highest layer alone
    rows = [RowSpec(0, 0, (1,), 0), RowSpec(0, 0, (1,), 0), RowSpec(0, 0, (0, 1), 0)]
    out = patched_logits(adapter, clean, ivs, rows, stats=stats)
    assert stats.unique_rows == 1 and stats.executed_evals == 2 and stats.minimal_evals == 2 + 2 + 3
    torch.testing.assert_close(out[2], out[1])
    torch.testing.assert_close(out[0], out[1])


def test_engine_rejects_bad_rows():
    model = _model("llama")
    adapter = get_adapter(model)
    clean = clean_run(adapter, [(5, 6)], pad_id=1)
    ivs = source_vectors(adapter, [(30, 31)], pad_id=1)
    with pytest.raises(ValueError, match="0..3"):
        patched_logits(adapter, clean, ivs, [RowSpec(0, 0, (4,), 0)])
    with pytest.raises(ValueError, match="outside the target prompt"):
        patched_logits(adapter, clean, ivs, [RowSpec(0, 0, (1,), 2)])


MODES = [("transfer", "bare", "first,last"), ("transfer", "formatted", "first,last,-2"),
         ("contrastive", "bare", "t_inst,last")]
#: every family through the sweep in one mode, each mode on a third of the families (5, 5, 4): the engine's maths
#: is checked per family at every layer set and position by test_engine_logits_match_reference; what the modes
#: add (targets, positions, sources, metrics) is the sweep's plumbing, the same code for every family
SWEEP_CASES = [(arch, *MODES[i % len(MODES)]) for i, arch in enumerate(ARCHS)]


@pytest.mark.parametrize("arch,mode,target,positions", SWEEP_CASES)
def test_sweep_matches_reference(arch, mode, target, positions, task):
    tok = tiny_tokenizer()
    model = _model(arch)
    lm = LoadedModel.wrap(model, tok, f"tiny-{arch}")
    samples = [0, 5, 16]
    res = patch_sweep(lm, task, "adj_ant", layers="triplets", positions=positions, samples=samples, mode=mode,
                      target=target, batch_size=11, chunk_size=2)
    sets = [c for k in (1, 2, 3) for c in itertools.combinations(range(4), k)]
    pos_list = [int(p) if p.lstrip("-").isdigit() else p for p in positions.split(",")]
    want = ref.reference_rows(model, tok, task, "adj_ant", samples, sets, pos_list, mode, target)
    assert len(res.rows) == len(want) == len(samples) * len(sets) * len(pos_list)
    for row in res.rows.itertuples():
        w = want[(row.sample, row.position, row.layers)]
        for k in ("logit", "prob", "rr", "logit_diff", "delta_logit_vs_target", "delta_logit_vs_instructed"):
            assert getattr(row, k) == pytest.approx(w[k], abs=TOL), (k, row.layers, row.position)
        assert row.rank == w["rank"] and row.acc_top1 == w["acc_top1"] and row.ia_top1 == w["ia_top1"]


@pytest.mark.parametrize("arch", ["olmo2", "gpt2"])
def test_source_model_matches_reference(arch, task):
    """IVs from another checkpoint (a different seed stands in for the SFT organism) patched into the base."""
    tok = tiny_tokenizer()
    base, other = _model(arch, seed=0), _model(arch, seed=1)
    res = patch_sweep(LoadedModel.wrap(base, tok, "base"), task, "adj_ant", layers="pairs", positions="first,last",
                      samples=[1, 2], source_model=LoadedModel.wrap(other, tok, "sft"))
    sets = [c for k in (1, 2) for c in itertools.combinations(range(4), k)]
    want = ref.reference_rows(base, tok, task, "adj_ant", [1, 2], sets, ["first", "last"], "transfer", "bare",
                           source_model=other)
    assert set(res.rows.source_model) == {"sft"} and set(res.rows.model) == {"base"}
    for row in res.rows.itertuples():
        assert row.logit == pytest.approx(want[(row.sample, row.position, row.layers)]["logit"], abs=TOL)
    # and it differs from the base's own IV (so the source model was really used)
    own = patch_sweep(LoadedModel.wrap(base, tok, "base"), task, "adj_ant", layers="pairs", samples=[1, 2])
    assert (own.rows.logit - res.rows.logit).abs().max() > 1e-3


def test_models_side_by_side_and_deterministic(task):
    tok = tiny_tokenizer()
    lms = [LoadedModel.wrap(_model("olmo2", seed=s), tok, n) for s, n in ((0, "base"), (1, "sft"), (2, "dpo"))]
    a = patch_sweep(lms, task, "adj_ant", layers="pairs", samples=4, seed=3)
    b = patch_sweep(lms, task, "adj_ant", layers="pairs", samples=4, seed=3)
    assert list(a.rows.model.unique()) == ["base", "sft", "dpo"]
    assert len(a.rows) == 3 * 4 * 10 * 2
    assert a.rows.equals(b.rows) and a.baselines.equals(b.baselines)
    c = patch_sweep(lms[:1], task, "adj_ant", layers="pairs", samples=4, seed=4)
    assert set(c.rows["sample"]) != set(a.rows["sample"])


def test_sweep_errors(task):
    tok = tiny_tokenizer()
    lm = LoadedModel.wrap(_model("olmo2"), tok, "m")
    with pytest.raises(ValueError, match="valid indices 0 to 3"):
        patch_sweep(lm, task, "adj_ant", layers="1,7", samples=2)
    with pytest.raises(ValueError, match="contrastive"):
        patch_sweep(lm, task, "adj_ant", positions="t_inst", samples=2)
    bigger = LoadedModel.wrap(tiny_model("olmo2", n_layers=5, d_model=64), tok, "five")
    with pytest.raises(ValueError, match="does not match"):
        patch_sweep(lm, task, "adj_ant", samples=2, source_model=bigger)
    with pytest.raises(ValueError, match="no subtask"):
        patch_sweep(lm, task, "nope", samples=2)


def test_first_position_skips_a_bos(task):
    """With a tokenizer that prepends BOS (as the organisms' does), 'first' is the first real token."""
    from tokenizers import processors

    tok = tiny_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", tok.bos_token_id)])
    model = _model("olmo2")
    res = patch_sweep(LoadedModel.wrap(model, tok, "bos"), task, "adj_ant", layers="single", positions="first",
                      samples=[0, 2])
    assert (res.rows.pos_index == 1).all()
    a = task.subtask("adj_ant")
    ivs = ref.source_ivs(model, instruction_prompt(tok, a.instruction).input_ids)
    assert instruction_prompt(tok, a.instruction).input_ids[0] == tok.bos_token_id
    for row in res.rows.itertuples():
        s = task.samples[row.sample]
        tgt = query_prompt(tok, task, s, query_style="bare")
        label = label_token_ids(tok, instructed_prompt(tok, task, s, a.instruction), s.answer("adj_ant"))[0]
        want = ref.patched_logits(model, tgt.input_ids, ivs, (row.first_layer,), 1)[label]
        assert row.logit == pytest.approx(float(want), abs=TOL)


def test_engine_sliding_window_matches_reference():
    """Sliding-window layers (window 3, shorter than the prompts) interleaved with full ones, as Gemma-2/OLMo-3:
    the engine's masks and prefix caches apply each layer's window, equal to HF's own forward."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      use_sliding_window=True, sliding_window=3, max_window_layers=0,
                      layer_types=["sliding_attention", "full_attention"] * 2, pad_token_id=1, eos_token_id=0)
    cfg._attn_implementation = "eager"
    model = Qwen2ForCausalLM(cfg).eval()
    adapter = get_adapter(model)
    assert [adapter.sliding_window(layer) for layer in range(4)] == [3, None, 3, None]
    targets = [(5, 6, 7, 8, 9, 10, 11), (12, 13, 14, 15)]
    clean = clean_run(adapter, targets, pad_id=1)
    for i, t in enumerate(targets):
        torch.testing.assert_close(clean.last_logits[i], ref.run_logits(model, t), atol=TOL, rtol=0)
    ivs = source_vectors(adapter, [(30, 31, 32)], pad_id=1)
    sets = [c for k in range(1, 4) for c in itertools.combinations(range(4), k)]
    rows = [RowSpec(t, 0, s, p) for t in range(2) for s in sets for p in range(len(targets[t]))]
    got = patched_logits(adapter, clean, ivs, rows, batch_size=9)
    ref_ivs = ref.source_ivs(model, (30, 31, 32))
    for r, logits in zip(rows, got, strict=True):
        want = ref.patched_logits(model, targets[r.target], ref_ivs, r.layers, r.token)
        torch.testing.assert_close(logits, want, atol=TOL, rtol=0)


@pytest.mark.parametrize("arch", ["qwen3", "gemma2", "olmo", "phi3", "mistral"])
def test_engine_mqa_matches_reference(arch):
    """Multi-query attention (one KV head) through the engine: single / pair / triplet sets, first and last."""
    model = tiny_model(arch, n_kv_heads=1)
    adapter = get_adapter(model)
    assert adapter.n_kv_heads == 1
    targets, source = [(5, 6, 7, 8, 9, 10), (11, 12, 13, 14)], (30, 31, 32, 33)
    clean = clean_run(adapter, targets, pad_id=1)
    ivs = source_vectors(adapter, [source], pad_id=1)
    ref_ivs = ref.source_ivs(model, source)
    rows = [RowSpec(t, 0, s, p) for t in range(2) for s in [(1,), (0, 2), (0, 1, 3)] for p in (0, len(targets[t]) - 1)]
    for r, logits in zip(rows, patched_logits(adapter, clean, ivs, rows), strict=True):
        want = ref.patched_logits(model, targets[r.target], ref_ivs, r.layers, r.token)
        torch.testing.assert_close(logits, want, atol=TOL, rtol=0)
