"""Cost estimates: FLOP counts from configs, the estimator's counts against the engine's own counters, dry runs
from config-only directories (no weights loaded), and the tracer's memory refusal. No timings: the speed and
accuracy of the estimates are checked by ``benchmarks/estimate_check.py``."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from ivlens.estimate.costs import (
    TargetShape,
    patch_cost,
    patch_row_bytes,
    trace_bytes,
    trie_states,
    trie_work,
)
from ivlens.estimate.flops import ModelShape, layer_flops, prompt_flops, unembed_flops
from ivlens.estimate.model import ApproxTokenizer, model_info
from ivlens.testing.tiny import ARCHS, tiny_model, tiny_tokenizer

DATA = Path(__file__).parents[1] / "data"
OLMO_1B = DATA / "olmo2-0425-1b-config"
OLMO_7B = DATA / "olmo2-1124-7b-config"


# ------------------------------------------------------------------------------------------------ FLOPs
def test_layer_flops_by_hand():
    s = ModelShape("llama", n_layers=2, d_model=8, n_heads=4, n_kv_heads=2, d_head=2, d_mlp=16, d_vocab=10)
    proj = 2 * 8 * 8 + 2 * 2 * 8 * 4 + 2 * 8 * 8  # q, k and v (2 KV heads of 2), o
    attn = 2 * 2 * 4 * 2 * 5  # scores and mix over 5 keys
    mlp = 3 * 2 * 8 * 16
    assert layer_flops(s, 5) == proj + attn + mlp
    assert unembed_flops(s) == 2 * 8 * 10
    # a whole prompt: token t attends to t + 1 keys
    assert prompt_flops(s, 3) == 2 * sum(layer_flops(s, t + 1) for t in range(3)) + unembed_flops(s)


@pytest.mark.parametrize("arch", ARCHS)
def test_shape_from_config_matches_the_model(arch, tmp_path):
    from ivlens.models.adapters import get_adapter

    model = tiny_model(arch)
    ad = get_adapter(model)
    model.config.save_pretrained(tmp_path)  # config only: no weights, no tokenizer
    info = model_info(str(tmp_path))
    s = info.shape
    assert (s.n_layers, s.d_model, s.n_heads, s.n_kv_heads, s.d_head, s.d_vocab) == (
        ad.n_layers, ad.d_model, ad.n_heads, ad.n_kv_heads, ad.d_head, ad.d_vocab)
    assert s.gated_mlp == (ad.mlp_params(0).kind == "gated")
    assert s.n_params == sum(p.numel() for p in model.parameters())  # counted on the meta device
    assert isinstance(info.tokenizer, ApproxTokenizer) and "no tokenizer" in info.tokenizer_note


def test_olmo2_configs():
    one, seven = model_info(str(OLMO_1B)).shape, model_info(str(OLMO_7B)).shape
    assert (one.n_layers, one.d_model, one.n_heads, one.d_mlp, one.d_vocab, one.tied) == (16, 2048, 16, 8192, 100352, False)
    assert (seven.n_layers, seven.d_model, seven.d_mlp) == (32, 4096, 11008)
    assert 1.4e9 < one.n_params < 1.6e9 and 7.2e9 < seven.n_params < 7.4e9


def test_approx_tokenizer_close_to_a_real_one():
    from ivlens.tasks import instructed_prompt, load_task

    tok, approx = tiny_tokenizer(), ApproxTokenizer(None, 0)
    t = load_task("adjectives")
    p = instructed_prompt(approx, t, t.samples[0], t.subtasks["adj_ant"].instruction)
    assert p.t_inst is not None and 10 <= len(p) <= 30  # "Given an adjective, state its antonym. Adjective: big. Answer:"
    assert tok is not None


# ------------------------------------------------------------------------------------------------ engine counts
def _engine_stats(adapter, tok, lengths_rows):
    from ivlens.patching.engine import EngineStats, RowSpec, clean_run, patched_logits, source_vectors

    seqs = [list(range(5, 5 + n)) for n, _ in lengths_rows]
    clean = clean_run(adapter, seqs, tok.pad_token_id)
    ivs = source_vectors(adapter, [[7, 8, 9]], tok.pad_token_id)
    rows = [RowSpec(b, 0, s, p) for b, (_n, spec) in enumerate(lengths_rows) for p, sets in spec for s in sets]
    st = EngineStats()
    patched_logits(adapter, clean, ivs, rows, batch_size=1 << 20, stats=st)
    return st


def test_estimator_counts_equal_the_engine_counters():
    from ivlens.models.adapters import get_adapter
    from ivlens.patching.plan import parse_layer_sets

    model = tiny_model("llama", n_layers=5)
    ad, tok = get_adapter(model), tiny_tokenizer()
    sets = parse_layer_sets("triplets", 5)
    targets = [TargetShape(4, (0, 3), 6), TargetShape(6, (1, 5), 8), TargetShape(1, (0,), 3)]
    st = _engine_stats(ad, tok, [(t.n_tokens, [(p, sets) for p in t.positions]) for t in targets])
    evals, unembed, _calls = trie_work(targets, sets, 5, lambda s: 1 << 20)
    assert evals == st.executed_evals
    assert unembed == st.unique_rows
    assert trie_states(sets, 5, last=True) == sum(range(1, 5))  # singles of the highest layer
    from ivlens.patching.dry_run import engine_work

    assert engine_work(targets, sets, 5, lambda s: 1 << 20)[:2] == (evals, unembed)


@pytest.mark.parametrize("continued", [False, True])
def test_engine_work_equals_scheduling_the_whole_chunk(continued):
    """The dry run's engine count, one schedule per kind of position scaled by each suffix, equals the engine's
    schedule of every row of the chunk at once, for targets of several lengths, a one-token target and positions
    at the start, the middle and the end, with and without the last-position identity."""
    from ivlens.patching.dry_run import engine_work
    from ivlens.patching.plan import parse_layer_sets
    from ivlens.patching.trie import RowSpec, scheduled_work

    sets = parse_layer_sets("triplets", 6)
    targets = [TargetShape(7, (1, 6), 9), TargetShape(4, (0, 2, 3), 6), TargetShape(1, (0,), 3),
               TargetShape(12, (1, 11), 14), TargetShape(7, (1, 6), 9)]
    rows = [RowSpec(b, 0, s, p) for b, t in enumerate(targets) for p in t.positions for s in sets]
    st = scheduled_work(rows, [t.n_tokens for t in targets], 6, group_rows=1 << 40, continued=continued)
    evals, unembed, _calls = engine_work(targets, sets, 6, lambda s: 1 << 20, continued=continued)
    assert (evals, unembed) == (st.executed_evals, st.unembed_rows)
    assert evals > 0 and unembed == (len(rows) if continued else st.unique_rows)


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gemma2"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_patch_row_bytes_mirrors_the_engine(arch, dtype):
    """One memory model of a patched row and of its metrics (ivlens.estimate.costs.trie_state_bytes and
    metric_bytes): the engine (sizes from the adapter) and the dry run (sizes from the config) agree."""
    from ivlens.estimate.costs import patch_metric_row_bytes
    from ivlens.models.adapters import get_adapter
    from ivlens.patching import engine

    model = tiny_model(arch).to(getattr(torch, dtype))
    ad = get_adapter(model)
    s = ModelShape.from_config(model.config)
    for n_keys, n_query in ((7, 1), (12, 5)):
        assert patch_row_bytes(s, n_keys, n_query, dtype) == engine.row_bytes(ad, n_keys, n_query)
    assert patch_metric_row_bytes(s, dtype) == engine.metric_row_bytes(ad)
    assert engine.row_bytes(ad, 12, 5) > engine.row_bytes(ad, 12, 1) > engine.row_bytes(ad, 7, 1)


def test_patch_plan_scales_with_samples():
    s = model_info(str(OLMO_1B)).shape
    sets = tuple((i,) for i in range(16))
    one = patch_cost(s, [TargetShape(3, (0, 2), 14)] * 4, sets, 10, chunk_size=2)
    two = patch_cost(s, [TargetShape(3, (0, 2), 14)] * 8, sets, 10, chunk_size=2)
    assert two.counts["rows"] == 2 * one.counts["rows"] == 2 * 4 * 2 * 16
    assert two.counts["layer_token_evals"] == 2 * one.counts["layer_token_evals"]
    assert two.memory["clean runs (one chunk)"] == one.memory["clean runs (one chunk)"]  # bounded by the chunk


# ------------------------------------------------------------------------------------------------ dry runs
def _app():
    from ivlens.cli import app

    return app


@pytest.fixture
def no_weights(monkeypatch):
    """Fail any attempt to load weights. The modules that bind ``load_model`` by name are imported first, so
    their names stay unpatched after this test (a first import under the patch would keep the refusal)."""
    import transformers

    import ivlens.api  # noqa: F401
    import ivlens.cli  # noqa: F401
    import ivlens.organism.build  # noqa: F401
    import ivlens.probing.run  # noqa: F401

    def refuse(*a, **k):
        raise AssertionError("a dry run loaded weights")

    monkeypatch.setattr("ivlens.models.load.load_model", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.mark.cli
def test_patch_dry_run_from_config_only(no_weights):
    r = CliRunner().invoke(_app(), ["patch", "--model", str(OLMO_7B), "--task", "adjectives", "--subtask", "adj_ant",
                                    "--layers", "triplets", "--positions", "first,last", "--samples", "3",
                                    "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "dry run: patch" in r.output and "rows 32,928" in r.output  # 5,488 sets × 2 positions × 3 samples
    assert "no tokenizer" in r.output and "peak memory" in r.output and "time ≈" in r.output


@pytest.mark.cli
def test_patch_dry_run_for_an_absent_gpu(no_weights, monkeypatch):
    """Sizing a GPU run from a CPU machine: the cost estimate uses the stated GPU working memory (or --memory-budget) and
    says it was timed on the CPU; no error. (CUDA is hidden, so this runs the same on a GPU machine.)"""
    from ivlens.estimate.inputs import ABSENT_GPU_BUDGET

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    args = ["patch", "--model", str(OLMO_1B), "--task", "adjectives", "--subtask", "adj_ant", "--layers", "pairs",
            "--samples", "2", "--device", "cuda", "--dtype", "bfloat16", "--dry-run"]
    r = CliRunner().invoke(_app(), args)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert f"memory budget {ABSENT_GPU_BUDGET / 2**30:.2f} GiB" in text and "timed on the CPU instead" in text
    r = CliRunner().invoke(_app(), [*args, "--memory-budget", "20GiB"])
    assert r.exit_code == 0 and "memory budget 20.00 GiB" in " ".join(r.output.split()), r.output


@pytest.mark.cli
def test_probe_eval_trace_dry_runs(no_weights, tmp_path):
    runner = CliRunner()
    cases = [["probe", "--model", str(OLMO_1B), "--tasks", "adjectives,animals", "--dry-run"],
             ["eval", "--model", str(OLMO_1B), "--task", "adjectives", "--samples", "4", "--dry-run"],
             ["trace", "--model", str(OLMO_1B), "--task", "adjectives", "--subtask", "adj_ant", "--sample", "0",
              "--dry-run"],
             ["trace", "--model", str(OLMO_1B), "--task", "animals", "--compare", "--samples", "2", "--dry-run"],
             ["organism", "build", "--dry-run", "--out", str(tmp_path / "never")]]
    for args in cases:
        r = runner.invoke(_app(), args)
        assert r.exit_code == 0, (args, r.output)
        assert f"dry run: {args[0] if args[0] != 'organism' else 'organism build'}" in r.output, r.output
    assert not (tmp_path / "never").exists()


@pytest.mark.cli
def test_dry_run_with_a_tokenizer_uses_it(tiny_dir, no_weights):
    d = tiny_dir("olmo2")
    r = CliRunner().invoke(_app(), ["patch", "--model", str(d), "--task", "adjectives", "--layers", "pairs",
                                    "--samples", "2", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "no tokenizer" not in r.output


# ------------------------------------------------------------------------------------------------ tracer memory
def test_trace_refusal_names_max_tokens(tmp_path):
    from ivlens.tracing.dry_run import trace_refusal

    s = model_info(str(OLMO_7B)).shape
    assert trace_refusal(s, 32, 1 << 34) is None
    msg = trace_refusal(s, 4096, 1 << 30)
    assert "--max-tokens" in msg and "L·H·T²" in msg and "--memory-budget" in msg
    n = int(msg.split("--max-tokens ")[1].split()[0])
    assert trace_bytes(s, n) <= 1 << 30 < trace_bytes(s, n + 1)


@pytest.mark.cli
def test_trace_cli_refuses_and_max_tokens_fits(tiny_dir, tmp_path):
    from ivlens.cli.trace import trace

    app = typer.Typer()
    app.command("trace")(trace)
    app.command("noop")(lambda: None)
    d = tiny_dir("olmo2", n_layers=2)
    long = " ".join(["the owl can fly"] * 40)
    r = CliRunner().invoke(app, ["trace", "--model", str(d), "--prompt", long, "--memory-budget", "16MiB",
                                 "--out", str(tmp_path / "a")])
    assert r.exit_code == 2, r.output
    assert "--max-tokens" in r.output and "memory budget" in r.output
    r = CliRunner().invoke(app, ["trace", "--model", str(d), "--prompt", long, "--max-tokens", "12", "--top-k", "3",
                                 "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    paths = json.loads(next((tmp_path / "b").glob("*.paths.json")).read_text())
    assert paths["n_tokens"] == 12


# ------------------------------------------------------------------------------------------------ probe batches
def test_probe_collection_sizes_batches_from_the_budget(tiny_dir, tmp_path):
    from ivlens.estimate.model import forward_batch_size
    from ivlens.models.load import load_model
    from ivlens.probing.collect import collect_ivs
    from ivlens.probing.instructions import instruction_set

    lm = load_model(str(tiny_dir("llama")))
    rows = instruction_set(["adjectives"], max_per_subtask=6)
    small = forward_batch_size(lm, 30, "16MiB")
    assert 1 <= small <= forward_batch_size(lm, 30, "1GiB")
    a = collect_ivs(lm, rows, tmp_path / "a", memory_budget="16MiB")
    b = collect_ivs(lm, rows, tmp_path / "b", batch_size=1)
    assert json.loads((tmp_path / "a" / "meta.json").read_text())["batch_size"] >= 1
    for layer in a.layers:
        torch.testing.assert_close(torch.from_numpy(a.load_layer(layer)), torch.from_numpy(b.load_layer(layer)),
                                   atol=1e-5, rtol=1e-5)
    shutil.rmtree(tmp_path / "a")


# ------------------------------------------------------------------------------------------------ what a run selects
def test_dry_run_selects_the_split_the_command_will_run():
    """``--split`` restricts the samples in the dry run as in the run: an organism's recipe split before it is
    built; a model without a card is refused as the command refuses it."""
    from ivlens.eval.dry_run import eval_costs
    from ivlens.organism.data import organism_query_split
    from ivlens.organism.dry_run import organism_recipe_info
    from ivlens.patching.dry_run import patch_costs
    from ivlens.tasks import TaskError, load_task

    task = load_task("adjectives")
    held = len(organism_query_split(task)["heldout"])
    info = organism_recipe_info("organism-sft")
    p_all, = patch_costs([], "adjectives", "adj_ant", layers="single", positions="last", infos=[info])
    p_held, = patch_costs([], "adjectives", "adj_ant", layers="single", positions="last", split="heldout",
                          infos=[info])
    assert p_all.counts["samples"] == len(task.samples) and p_held.counts["samples"] == held < len(task.samples)
    e_held, = eval_costs([], "adjectives", split="heldout", infos=[info])
    e_all, = eval_costs([], "adjectives", infos=[info])
    assert e_held.counts["prompts"] * len(task.samples) == e_all.counts["prompts"] * held
    with pytest.raises(TaskError, match="--split heldout needs a model organism"):
        patch_costs([], "adjectives", "adj_ant", split="heldout", infos=[model_info(str(OLMO_1B))])


def test_dry_run_of_answer_scoring_counts_the_prompts_once_and_the_trie():
    """``--score answer`` runs each prompt (each patched row's prompt) once and the candidates' token trie against
    it: the same result rows, the engine's rows without the last-position identity, trie nodes per distinct row and
    per baseline run; far below the k forwards per prompt of per-label scoring."""
    from ivlens.estimate.costs import answer_scoring_flops
    from ivlens.eval.dry_run import eval_costs
    from ivlens.patching.dry_run import answer_trie, patch_costs
    from ivlens.patching.plan import PatchPlan, resolve_position
    from ivlens.patching.sweep import starts_with_bos
    from ivlens.patching.trie import RowSpec, scheduled_work
    from ivlens.tasks import load_task, query_prompt
    from ivlens.tasks.prompts import AnswerCandidates

    task = load_task("adjectives")
    labels = AnswerCandidates.of(task, "adj_ant").labels
    k = len(labels)
    info = model_info(str(OLMO_1B))
    kw = dict(layers="pairs", positions="first,last", samples=3, infos=[info])
    first, = patch_costs([], "adjectives", "adj_ant", **kw)
    answer, = patch_costs([], "adjectives", "adj_ant", score="answer", **kw)
    assert answer.counts["rows"] == first.counts["rows"] and answer.counts["answer_candidates"] == k > 1
    # the engine's own count of the rows, without the last-position identity
    from ivlens.estimate.inputs import chosen_samples

    plan = PatchPlan.build("pairs", "first,last", info.shape.n_layers)
    targets = [query_prompt(info.tokenizer, task, s, "raw", query_style="bare")
               for s in chosen_samples(task, 3, 0, "all", info)]
    rows = [RowSpec(b, 0, ls, resolve_position(p, len(t), has_bos=starts_with_bos(info.tokenizer, t)))
            for b, t in enumerate(targets)
            for p in plan.positions for ls in plan.layer_sets]
    engine = scheduled_work(rows, [len(t) for t in targets], info.shape.n_layers, group_rows=1 << 40, continued=True)
    assert answer.counts["distinct_rows"] == engine.unique_rows > first.counts["distinct_rows"]
    trie = answer_trie(info.tokenizer, targets[0], labels)
    assert 0 < trie.n_nodes < k * 4 and answer.counts["answer_trie_nodes"] == (engine.unique_rows + 2 * 3) * trie.n_nodes
    shortest = min(len(t) for t in targets)
    assert answer.flops > first.flops + engine.unique_rows * answer_scoring_flops(info.shape, shortest, trie)
    assert answer.flops < k * first.flops / 4  # per-label scoring ran the engine k times over
    g_first, = eval_costs([], "adjectives", samples=3, infos=[info])
    g_answer, = eval_costs([], "adjectives", samples=3, score="answer", infos=[info])
    assert g_answer.counts["answer_candidates"] == k and g_answer.counts["answer_trie_nodes"] > 0
    # per prompt: its forward (padded to its batch's width) and the trie; 3 samples × 3 conditions × 2 subtasks
    extra = g_answer.flops - g_first.flops
    n_prompts = g_first.counts["prompts"]
    assert n_prompts == 18 and extra > n_prompts * (prompt_flops(info.shape, 1) + answer_scoring_flops(info.shape, 1,
                                                                                                        trie))
    assert extra < g_first.flops  # not k forwards per prompt


def test_train_plan_takes_measured_steps():
    """With measured step times the training stages cost ``steps × step`` (CPU-seconds over the cores the run
    gets), not the FLOP model; the FLOPs are still counted for the printout."""
    from ivlens.estimate.costs import TRAINER_OPS_PER_STEP, Rates, TrainStage, seconds, train_cost

    shape = ModelShape("olmo2", n_layers=6, d_model=256, n_heads=4, n_kv_heads=4, d_head=64, d_mlp=512,
                       d_vocab=3000, n_params=4_700_000)
    stages = [TrainStage("pretrain", 100, 32, 64), TrainStage("sft", 50, 32, 56)]
    modelled = train_cost(shape, stages)
    timed = train_cost(shape, stages, step_seconds={"pretrain": 0.5, "sft": 0.3})
    assert timed.flops == modelled.flops and timed.measured_flops == modelled.flops
    assert timed.measured_seconds == pytest.approx(100 * 0.5 + 50 * 0.3)
    rates = Rates(gemm=1e11, op_latency=1e-6, copy=1e10, layer_latency=1e-3, threads=2, cores=2, others=0.0)
    overhead = 150 * TRAINER_OPS_PER_STEP * 1e-6
    assert seconds(timed, rates) == pytest.approx((100 * 0.5 + 50 * 0.3) / 2 + overhead)  # CPU-s on 2 idle cores
    # steps timed in wall time on the run's own threads (the organism build's estimate) are taken as they are: not
    # shared out over the cores, not scaled by the load average, and their FLOPs not counted again
    wall = train_cost(shape, stages, step_seconds={"pretrain": 0.5, "sft": 0.3}, step_wall=True)
    assert wall.measured_seconds == 0 and wall.wall_seconds == pytest.approx(100 * 0.5 + 50 * 0.3)
    assert wall.flops == modelled.flops and wall.wall_flops == modelled.flops
    assert seconds(wall, rates) == pytest.approx(100 * 0.5 + 50 * 0.3 + overhead)
    loaded = dataclasses.replace(rates, others=2.0)
    assert seconds(wall, loaded) - seconds(wall, rates) == pytest.approx(overhead / loaded.barrier_cores() - overhead)


def test_train_step_latency_times_a_real_step():
    from transformers import Olmo2Config

    from ivlens.estimate.calibrate import train_step_latency

    cfg = Olmo2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4)
    before = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    step = train_step_latency(cfg, 4, 16, steps=5)
    assert 0 < step < 5 and torch.equal(torch.random.get_rng_state(), before)  # the caller's seed untouched
    assert train_step_latency(cfg, 4, 16, steps=5) == step  # timed once per process (cached by shape and optimiser)
    # on the run's own two threads, in wall time: timed apart (its own cache entry), the caller's threads restored
    on_two = train_step_latency(cfg, 4, 16, steps=2, threads=2)
    assert 0 < on_two < 5 and train_step_latency(cfg, 4, 16, steps=2, threads=2) == on_two
    assert torch.get_num_threads() == threads and torch.equal(torch.random.get_rng_state(), before)


def test_probe_plan_takes_measured_fits():
    """The measured seconds of one layer's probe fits (every probe's batch) replace the L-BFGS model, on one thread
    (the barrier cores); the fit count is what a run fits: per probe and layer, folds CV fits, folds per shuffle,
    the held-out split and the refit on all rows."""
    from ivlens.estimate.costs import Rates, probe_cost, seconds
    from ivlens.probing.cost import probe_layer_latency

    shape = ModelShape("olmo2", n_layers=6, d_model=256, n_heads=4, n_kv_heads=4, d_head=64, d_mlp=512,
                       d_vocab=3000, n_params=4_700_000)
    p = probe_cost(shape, [20] * 100, 6, 3, folds=5, n_shuffles=1, layer_seconds=0.4)
    assert p.counts["probe_fits"] == 6 * 3 * 12 and p.kernel_calls == 0
    assert p.serial_seconds == pytest.approx(6 * 0.4)
    idle = Rates(gemm=1e11, op_latency=1e-6, copy=1e10, layer_latency=0.0, threads=2, cores=2, others=0.0)
    busy = Rates(gemm=1e11, op_latency=1e-6, copy=1e10, layer_latency=0.0, threads=2, cores=2, others=2.0)
    assert seconds(p, busy) - seconds(p, idle) > p.serial_seconds  # one thread's share of a busy machine
    modelled = probe_cost(shape, [20] * 100, 6, 3, folds=5, n_shuffles=1)
    assert modelled.serial_seconds == 0 and modelled.kernel_calls > 0
    small, large = probe_layer_latency(80, 16, 4), probe_layer_latency(320, 64, 4)
    assert 0 < small < large < 5


def test_probe_dry_run_times_the_runs_own_probes(monkeypatch):
    """The dry run times one batch per probe of the run (probe_specs: all, and one per task), with each probe's own
    rows and classes and the run's layers (fitted together), and the estimate's time is the layers times their sum."""
    import ivlens.probing.dry_run as dr
    from ivlens.estimate.model import ModelInfo
    from ivlens.testing.tiny import tiny_tokenizer

    timed = []
    monkeypatch.setattr(dr, "probe_layer_latency",
                        lambda n, d, k, heldout, folds, layers: timed.append((n, d, k, heldout, layers)) or 0.25)
    shape = ModelShape("olmo2", n_layers=6, d_model=64, n_heads=4, n_kv_heads=4, d_head=16, d_mlp=128,
                       d_vocab=384, n_params=1_000_000)
    info = ModelInfo(name="tiny", path="tiny", shape=shape, tokenizer=tiny_tokenizer())
    cost, = dr.probe_costs([], ["adjectives", "animals"], infos=[info], max_per_subtask=20)
    n = cost.counts["instructions"]
    assert sorted(timed) == sorted([(n, 64, 4, True, 6), (n // 2, 64, 2, True, 6), (n // 2, 64, 2, True, 6)])
    assert cost.serial_seconds == pytest.approx(6 * 3 * 0.25)


def test_the_build_plan_runs_with_the_builds_threads():
    """The organism build trains with a fixed thread count, whatever the machine: its cost estimate says so, and the time
    is computed with it (not with the dry run's own thread count)."""
    import io

    from rich.console import Console

    from ivlens.dry_run import print_costs
    from ivlens.organism.dry_run import organism_costs, organism_shape
    from ivlens.organism.train import THREADS
    from ivlens.scoped import torch_threads

    assert THREADS != 1
    with torch_threads(1):
        cost, = organism_costs("tiny", time_steps=False)
        out = print_costs([cost], [organism_shape("tiny")], console=Console(file=io.StringIO()))
    assert cost.threads == THREADS and out["costs"][0]["rates"]["threads"] == THREADS


def test_the_build_plan_times_training_steps_on_the_builds_threads(monkeypatch):
    """The build's estimate times a pretraining and an SFT step on the threads the build trains with, in wall time
    (two threads are not twice as fast as one on the organism's small matrices), and takes the stages' time as
    ``steps × step`` in wall seconds; a DPO step is SFT's scaled to its rows, plus the reference model's forward."""
    import ivlens.organism.dry_run as organism_dry_run
    from ivlens.organism.train import SIZES

    timed = []

    def step_seconds(config, batch, seq_len, device="cpu", *, steps=3, optimizers=None, optimizer_name="adamw",
                     threads=None):
        timed.append((batch, seq_len, threads))
        return 0.25

    monkeypatch.setattr(organism_dry_run, "train_step_latency", step_seconds)
    size = SIZES["tiny"]
    for threads in (2, 1):
        timed.clear()
        cost, = organism_dry_run.organism_costs("tiny", threads=threads)
        assert timed == [(size.pretrain_batch, size.seq_len, threads),
                         (size.sft_batch, organism_dry_run.TRAIN_ROW_TOKENS["sft"], threads)]
        rows = organism_dry_run.TRAIN_ROW_TOKENS
        dpo_step = 0.25 * (2 * size.dpo_batch * rows["dpo"]) / (size.sft_batch * rows["sft"])
        expected = 0.25 * (size.pretrain_steps + size.sft_steps) + size.dpo_steps * dpo_step * (
            1 + organism_dry_run.FORWARD_SHARE_OF_STEP)
        assert cost.measured_seconds == 0 and cost.wall_seconds == pytest.approx(expected)
