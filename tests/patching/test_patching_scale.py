"""The engine at scale: results identical across memory budgets and batch sizes, bounded tensors, the counting
function equal to the engine's own counters, bf16 against fp32, and ``--memory-budget`` on the command line."""

from __future__ import annotations

import itertools

import numpy as np
import patching_reference as ref
import pytest
import torch
from typer.testing import CliRunner

from ivlens.cli import app
from ivlens.models.adapters import get_adapter
from ivlens.models.load import LoadedModel
from ivlens.patching import sweep as sweep_mod
from ivlens.patching.engine import (
    EngineStats,
    RowSpec,
    clean_run,
    metric_row_bytes,
    patched_logits,
    patched_metrics,
    row_bytes,
    source_vectors,
)
from ivlens.patching.metrics import label_metrics
from ivlens.patching.sweep import patch_sweep
from ivlens.patching.trie import scheduled_work
from ivlens.tasks import load_task
from ivlens.testing.tiny import tiny_model, tiny_tokenizer

TOL = 1e-5
TARGETS = [(5, 6, 7, 8, 9, 10), (11, 12, 13), (20,), (21, 22, 23, 24)]
SOURCES = [(30, 31, 32, 33), (40, 41)]


def _setup(arch: str = "llama", n_layers: int = 5, dtype=torch.float32):
    model = tiny_model(arch, seed=0, n_layers=n_layers, d_model=64, n_heads=4,
                       n_kv_heads=2 if arch in ("llama", "qwen2") else None).to(dtype)
    adapter = get_adapter(model)
    clean = clean_run(adapter, TARGETS, pad_id=1)
    ivs = source_vectors(adapter, SOURCES, pad_id=1)
    sets = [c for k in (1, 2, 3) for c in itertools.combinations(range(n_layers), k)]
    rows = [RowSpec(t, (t + i) % 2, s, p) for t in range(len(TARGETS)) for i, s in enumerate(sets)
            for p in range(len(TARGETS[t]))]
    label = torch.tensor([50, 60, 70, 80])
    alt = torch.tensor([51, -1, 71, 81])
    space = torch.tensor([50, 60, 61, 70, 80, 90])
    return model, adapter, clean, ivs, rows, label, alt, space


def _assert_same(a: dict, b: dict, tol: float = TOL) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], atol=tol, rtol=0, equal_nan=True, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("arch", ["llama", "olmo2", "gpt2"])
def test_metrics_identical_across_budgets_and_batch_sizes(arch):
    model, adapter, clean, ivs, rows, label, alt, space = _setup(arch)
    want = patched_metrics(adapter, clean, ivs, rows, label, alt, space, batch_size=100_000)
    # the metrics of the engine's logits, and the logits themselves against the naive reference
    logits = patched_logits(adapter, clean, ivs, rows, batch_size=100_000)
    t = torch.tensor([r.target for r in rows])
    _assert_same(want, label_metrics(logits, label[t], alt[t], space))
    ref_ivs = [ref.source_ivs(model, s) for s in SOURCES]
    for r, lg in list(zip(rows, logits, strict=True))[::7]:
        torch.testing.assert_close(lg, ref.patched_logits(model, TARGETS[r.target], ref_ivs[r.source], r.layers,
                                                          r.token), atol=TOL, rtol=0)
    rb = row_bytes(adapter, clean.batch.input_ids.shape[1], 3)
    for kw in ({"batch_size": 3}, {"batch_size": 17}, {"memory_budget": 5 * rb}, {"memory_budget": 40 * rb}, {}):
        got = patched_metrics(adapter, clean, ivs, rows, label, alt, space, **kw)
        _assert_same(got, want)
    # small groups split trie subtrees: the logits still equal the reference's
    small = patched_logits(adapter, clean, ivs, rows, batch_size=2)
    torch.testing.assert_close(small, logits, atol=TOL, rtol=0)


def test_tensors_stay_bounded(monkeypatch):
    """No layer call sees more states than a group's cap, and no unembedding more rows than the metric
    sub-batch, however many rows there are."""
    _model, adapter, clean, ivs, rows, label, alt, space = _setup()
    rows = rows * 3  # repeated rows are deduplicated, not recomputed
    W = clean.batch.input_ids.shape[1]
    budget = 7 * row_bytes(adapter, W, W)
    seen = {"layer": 0, "logits": 0}
    run_layer, logits = adapter.run_layer, adapter.logits

    def spy_layer(layer, hidden, **kw):
        seen["layer"] = max(seen["layer"], hidden.shape[0] * hidden.shape[1])
        return run_layer(layer, hidden, **kw)

    def spy_logits(resid):
        seen["logits"] = max(seen["logits"], resid.shape[0])
        return logits(resid)

    monkeypatch.setattr(adapter, "run_layer", spy_layer)
    monkeypatch.setattr(adapter, "logits", spy_logits)
    stats = EngineStats()
    patched_metrics(adapter, clean, ivs, rows, label, alt, space, memory_budget=budget, stats=stats)
    # a group of G rows with suffix s holds at most G states of s tokens; G·row_bytes(W, s) ≤ budget
    assert 0 < seen["layer"] <= max(budget // row_bytes(adapter, W, s) * s for s in range(1, W + 1))
    assert seen["logits"] <= max(1, budget // metric_row_bytes(adapter))
    assert stats.groups > 4 and stats.rows == len(rows) and stats.unique_rows * 3 <= len(rows)


@pytest.mark.parametrize("group_rows", [2, 5, 64, 100_000])
def test_scheduled_work_counts_what_the_engine_runs(group_rows):
    _model, adapter, clean, ivs, rows, label, alt, space = _setup()
    stats = EngineStats()
    patched_metrics(adapter, clean, ivs, rows, label, alt, space, batch_size=group_rows, stats=stats)
    scheduled = scheduled_work(rows, [len(t) for t in TARGETS], adapter.n_layers, group_rows=group_rows)
    assert scheduled.to_dict() == {**stats.to_dict(), "baseline_evals": 0}
    assert scheduled.executed_evals <= scheduled.minimal_evals
    if group_rows == 100_000:  # one group per suffix length: the full trie's sharing
        assert scheduled.groups == len({len(t) - r.token for r in rows for t in [TARGETS[r.target]]})


def test_scheduled_work_example_and_many_layers():
    st = scheduled_work([RowSpec(0, 0, (1, 3), 0)], lengths=[5], n_layers=6, group_rows=1024)
    assert (st.executed_evals, st.unembed_rows, st.layer_calls) == (20, 1, 4)
    # past 62 layers the bit masks become Python integers: the same counts as a direct sum
    rows = [RowSpec(0, 0, (a, b), 0) for a, b in itertools.combinations(range(0, 70, 7), 2)]
    st = scheduled_work(rows, lengths=[2], n_layers=70, group_rows=1024)
    last_b = {}
    for r in rows:
        last_b[r.layers[0]] = max(last_b.get(r.layers[0], 0), r.layers[1])
    # state (a,) runs layers a+1 … (its rows' last second layer); each (a, b) then runs b+1 … 69; 2 tokens each
    want = sum(2 * (b - a) for a, b in last_b.items()) + sum(2 * (69 - r.layers[1]) for r in rows)
    assert st.executed_evals == want and len(last_b) == 9


def test_sweep_identical_across_budgets_and_passes(monkeypatch):
    task = load_task("adjectives")
    lm = LoadedModel.wrap(tiny_model("qwen2", n_layers=4, d_model=64, n_kv_heads=2), tiny_tokenizer(), "q")
    kw = dict(layers="triplets", positions="first,last", samples=[0, 3, 7], target="formatted")
    a = patch_sweep(lm, task, "adj_ant", **kw)
    b = patch_sweep(lm, task, "adj_ant", memory_budget="16MiB", batch_size=3, **kw)
    monkeypatch.setattr(sweep_mod, "clean_bytes_per_sample", lambda lm, n: 1 << 40)  # one sample per pass
    c = patch_sweep(lm, task, "adj_ant", memory_budget="1GiB", **kw)
    for other in (b, c):
        for x, y in ((a.rows, other.rows), (a.baselines, other.baselines)):
            assert list(x.columns) == list(y.columns) and len(x) == len(y)
            num = x.select_dtypes("number").columns
            assert np.allclose(x[num].to_numpy(float), y[num].to_numpy(float), atol=TOL, rtol=0, equal_nan=True)
            assert x.drop(columns=num).equals(y.drop(columns=num))


def test_bf16_against_fp32():
    """bf16 weights and activations (metrics in float32) against fp32 on CPU. Stated tolerances: every logit
    within 0.02 (observed max 0.0074; this tiny model's logits have std 0.17, bf16 keeps 8 bits of mantissa),
    probabilities within 1e-3, and the same top-1 token wherever fp32's top-1 leads by more than 0.02."""
    _m, a32, c32, i32, rows, label, alt, space = _setup()
    _m, a16, c16, i16, *_ = _setup(dtype=torch.bfloat16)
    m32 = patched_metrics(a32, c32, i32, rows, label, alt, space, batch_size=64)
    m16 = patched_metrics(a16, c16, i16, rows, label, alt, space, batch_size=64)
    assert m16["logit"].dtype == torch.float32 and m16["prob"].dtype == torch.float32
    assert (m16["logit"] - m32["logit"]).abs().max() < 0.02
    assert (m16["prob"] - m32["prob"]).abs().max() < 1e-3
    lg32 = patched_logits(a32, c32, i32, rows)
    assert (patched_logits(a16, c16, i16, rows).float() - lg32).abs().max() < 0.02
    top2 = lg32.topk(2, -1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.02
    assert clear.sum() > len(rows) // 2
    assert torch.equal(m16["top1"][clear], m32["top1"][clear])


@pytest.mark.cli
def test_cli_memory_budget(tmp_path):
    d = tmp_path / "m"
    tiny_model("llama", n_layers=3, d_model=64, n_kv_heads=2).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    base = ["patch", "--model", str(d), "--samples", "2", "--layers", "pairs", "--no-figures"]
    bad = CliRunner().invoke(app, [*base, "--memory-budget", "lots", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--memory-budget" in bad.output and "512MiB" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "bad").exists()
    ok = CliRunner().invoke(app, [*base, "--memory-budget", "64MiB", "--out", str(tmp_path / "ok")])
    assert ok.exit_code == 0, ok.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_and_split_devices_match_cpu():
    """On a GPU: the whole model on CUDA (fp32 and bf16), and a model spread over CPU and CUDA layer by layer (as
    accelerate's device_map places it), against the CPU engine."""
    import copy

    model, adapter, clean, ivs, rows, label, alt, space = _setup()
    want = patched_metrics(adapter, clean, ivs, rows, label, alt, space)

    def check(m, tol):
        a = get_adapter(m)
        got = patched_metrics(a, clean_run(a, TARGETS, pad_id=1), source_vectors(a, SOURCES, pad_id=1), rows,
                              label, alt, space)
        for k in ("logit", "prob", "logit_diff"):
            torch.testing.assert_close(got[k], want[k], atol=tol, rtol=0, equal_nan=True, msg=k)
        assert (got["top1"] == want["top1"]).float().mean() > 0.95

    check(copy.deepcopy(model).cuda(), 1e-4)
    check(copy.deepcopy(model).cuda().to(torch.bfloat16), 0.02)
    split = copy.deepcopy(model)
    a2 = get_adapter(split)
    for k in range(2, a2.n_layers):
        a2.layer(k).cuda()
    a2.final_norm.cuda()
    if a2.unembed.weight is not a2.embed.weight:
        a2.unembed.cuda()
    check(split, 1e-4)
