"""Benchmark: the patching engine's throughput against this machine's own matrix-product rate.

    python benchmarks/patch_scale.py                          # SmolLM2-135M (real weights), then OLMo-2-1B-shaped
    python benchmarks/patch_scale.py --model smollm2 --samples 8
    python benchmarks/patch_scale.py --model olmo2-1b --samples 2 --dtype bfloat16

Each model runs in its own process (so its peak RSS is its own) a triplet sweep (``--layers triplets``,
``--positions first,last``, the bare query-only target, adjectives / adj_ant) and prints one JSON line:

- ``rows``, ``unique_rows``, ``seconds`` (the sweep: prompts, clean runs, patched rows, metrics, result table;
  not the model's loading), ``rows_per_s``, ``peak_rss_gb`` (the process's peak, loading included);
- ``executed_gflop``: the matrix products the engine ran (layer-token evaluations of the patched rows and of the
  clean, instructed and source runs, :func:`ivlens.estimate.flops.layer_flops` each, and every unembedded row,
  :func:`~ivlens.estimate.flops.unembed_flops`); ``minimal_gflop``: the same for the per-row minimum
  ``Σ_rows (L − 1 − l0)(T − p)`` and one unembedding per requested row (what rows cost one by one, without
  the engine's sharing or deduplication);
- ``gemm_gflops``: this machine's fp32 (or ``--dtype``) matrix-product rate on the model's own shapes
  (:func:`ivlens.estimate.calibrate.gemm_rate`), measured in the same process just before and just after the
  sweep (both printed; their mean is used), with the same thread count;
- ``efficiency = executed FLOPs / (seconds × GEMM rate)``: the share of the machine's product rate the sweep
  achieved, everything else (attention, norms, metrics, Python, the result table) counting as lost time.

Models: ``smollm2`` is SmolLM2-135M-Instruct (real weights, 30 layers, d_model 576, vocabulary 49,152).
``olmo2-1b`` is a **random-weight** model of OLMo-2-1B's shape built from its config (16 layers, d_model 2048,
16 heads, d_mlp 8192, vocabulary 100,352, rope θ 5·10⁵; nothing downloaded) with SmolLM2's tokenizer for the
prompts; its results mean nothing, its cost is the real one. It uses few samples (default 2) to stay short.

Threads default to 1: on a shared 2-core machine two busy-waiting torch threads lose more to the other processes
than they gain (``--threads 2`` to try). The efficiency is a ratio measured in one process, so it holds as well
as a shared machine allows; absolute seconds do not.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

MODELS = ("smollm2", "olmo2-1b")


def olmo2_1b_shaped(dtype: torch.dtype):
    """A random OLMo-2-1B-shaped model (no download) and SmolLM2's tokenizer."""
    from transformers import AutoTokenizer, Olmo2Config, Olmo2ForCausalLM

    from ivlens.models.load import LoadedModel, resolve_name

    cfg = Olmo2Config(vocab_size=100352, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                      num_attention_heads=16, num_key_value_heads=16, rope_theta=500000.0, rms_norm_eps=1e-6,
                      max_position_embeddings=4096, tie_word_embeddings=False, pad_token_id=1, eos_token_id=0,
                      architectures=["Olmo2ForCausalLM"])
    cfg._attn_implementation = "eager"
    with torch.device("meta"):
        model = Olmo2ForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(dtype)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # uniform init is fast; scale 0.02 like HF's normal init
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.uniform_(-0.035, 0.035, generator=gen)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg)  # its buffers were on the meta device
    path, gguf = resolve_name("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf)  # the tokenizer alone (the weights are not needed)
    return LoadedModel.wrap(model.eval(), tok, "olmo2-1b-shaped-random")


def run_one(args) -> dict:
    from ivlens.estimate.calibrate import gemm_rate, model_gemm_shapes
    from ivlens.estimate.flops import ModelShape, layer_flops, unembed_flops
    from ivlens.models.load import load_model
    from ivlens.patching import patch_sweep
    from ivlens.tasks import load_task
    from ivlens.tasks.selection import sample_indices

    torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    t0 = time.perf_counter()
    if args.model == "smollm2":
        lm = load_model("smollm2-135m-instruct", dtype=args.dtype)
    else:
        lm = olmo2_1b_shaped(dtype)
    load_s = time.perf_counter() - t0
    shape = ModelShape.from_config(lm.model.config)
    shapes = model_gemm_shapes(shape)
    task = load_task("adjectives")
    samples = args.samples or (8 if args.model == "smollm2" else 2)
    sample_ids = sample_indices(task, samples, seed=args.seed)
    # warm-up: one sample, single layers (allocator, kernels), not timed
    patch_sweep(lm, task, "adj_ant", layers="single", positions="first,last", samples=sample_ids[:1])
    rate_before = gemm_rate(shapes, "cpu", args.dtype)
    t0 = time.perf_counter()
    res = patch_sweep(lm, task, "adj_ant", layers=args.layers, positions="first,last", samples=sample_ids,
                      target="bare", memory_budget=args.memory_budget)
    seconds = time.perf_counter() - t0
    from ivlens.estimate import calibrate

    calibrate.MEASURED.clear()  # measure again after the sweep (the machine's speed drifts)
    rate_after = gemm_rate(shapes, "cpu", args.dtype)
    rate = (rate_before + rate_after) / 2
    st = res.stats[lm.name]
    rows = res.rows
    width = int(rows.n_tokens.max())  # padded key columns of the patched rows' attention
    base_tokens = st.baseline_evals // shape.n_layers
    base_keys = max(1, round(base_tokens / max(1, 2 * len(sample_ids) + 1) / 2))  # mean keys per baseline token
    n_base_logits = 2 * len(sample_ids) + 1  # clean target, instructed, source: one last-position row each
    executed = (st.executed_evals * layer_flops(shape, width) + st.baseline_evals * layer_flops(shape, base_keys)
                + (st.unembed_rows + n_base_logits) * unembed_flops(shape))
    minimal = (st.minimal_evals * layer_flops(shape, width) + st.baseline_evals * layer_flops(shape, base_keys)
               + (st.rows + n_base_logits) * unembed_flops(shape))
    return {
        "model": lm.name, "random_weights": args.model != "smollm2", "dtype": args.dtype, "layers": args.layers,
        "positions": "first,last", "target": "bare", "samples": len(sample_ids),
        "target_tokens": sorted(int(x) for x in rows.n_tokens.unique()),
        "rows": len(rows), "unique_rows": st.unique_rows, "seconds": round(seconds, 2),
        "rows_per_s": round(len(rows) / seconds, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "executed_gflop": round(executed / 1e9, 1), "minimal_gflop": round(minimal / 1e9, 1),
        "executed_evals": st.executed_evals, "minimal_evals": st.minimal_evals, "baseline_evals": st.baseline_evals,
        "unembed_rows": st.unembed_rows, "groups": st.groups, "layer_calls": st.layer_calls,
        "gemm_gflops": round(rate / 1e9, 2), "gemm_gflops_before_after": [round(rate_before / 1e9, 2),
                                                                       round(rate_after / 1e9, 2)],
        "efficiency": round(executed / (seconds * rate), 3), "load_s": round(load_s, 1),
        "threads": torch.get_num_threads(), "memory_budget": args.memory_budget,
        "cpu": platform.processor() or platform.machine(),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=(*MODELS, "all"), default="all")
    ap.add_argument("--samples", type=int, default=None, help="samples (default: 8 for smollm2, 2 for olmo2-1b)")
    ap.add_argument("--layers", default="triplets")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory-budget", default=None, help="as ivlens patch --memory-budget (default: automatic)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if args.model != "all":
        print(json.dumps(run_one(args)), flush=True)
        return
    for m in MODELS:  # one process each: its own peak RSS
        cmd = [sys.executable, __file__, "--model", m, "--layers", args.layers, "--dtype", args.dtype,
               "--threads", str(args.threads), "--seed", str(args.seed)]
        if args.samples:
            cmd += ["--samples", str(args.samples)]
        if args.memory_budget:
            cmd += ["--memory-budget", args.memory_budget]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
