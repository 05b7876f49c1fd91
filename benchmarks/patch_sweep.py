"""Benchmark: a paper-style patching loop (one nnsight trace per run) against ivlens's engine.

    python benchmarks/patch_sweep.py                       # organism-dpo, adjectives/adj_ant, 100 samples
    python benchmarks/patch_sweep.py --model tiny          # a random OLMo-2 of the organism's shape (6 × 256, 4 heads)
    python benchmarks/patch_sweep.py --triplets            # also time a triplet sweep with ivlens

(a) *naive*: for every sample and layer set, as the paper's code does it, an instructed run, a source run, a
target-only run and one patched run per position, each its own ``nnsight`` trace (under ``torch.no_grad``).
(b) *ivlens*: :func:`ivlens.patching.patch_sweep` on the same samples, layer sets and positions.

The script checks that (a) and (b) agree (label logit and its change against the target-only run, every row),
prints both wall times and their ratio, the layer-token evaluations each executed for the patched rows and the
minimum needed (``Σ_rows (L − 1 − l0)(T − p)``: the layers after the first patched one × the tokens from the
patched position on), and ends with one JSON line (keys ``naive_s, ivlens_s, speedup, executed_evals,
minimal_evals`` and more).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import nnsight  # noqa: E402
import torch  # noqa: E402
from nnsight import NNsight  # noqa: E402

from ivlens.models.load import LoadedModel, load_model  # noqa: E402
from ivlens.patching import PatchPlan, patch_sweep  # noqa: E402
from ivlens.patching.sweep import prepare  # noqa: E402
from ivlens.tasks import instruction_prompt, load_task  # noqa: E402
from ivlens.tasks.selection import sample_indices  # noqa: E402


def stand_in() -> LoadedModel:
    """A random OLMo-2 with the organism's likely shape and the tiny tokenizer (until the organism exists)."""
    from ivlens.testing.tiny import tiny_model, tiny_tokenizer

    model = tiny_model("olmo2", seed=0, n_layers=6, d_model=256, n_heads=4)
    return LoadedModel.wrap(model, tiny_tokenizer(), "tiny-olmo2-6x256")


def naive_loop(lm: LoadedModel, task, subtask: str, plan: PatchPlan, sample_ids: list[int], target: str):
    """The paper-style loop. Returns ``{(sample, position, layers): (logit, delta_logit_vs_target)}`` and the
    layer-token evaluations it executed (all runs, and the patched runs alone)."""
    nm = NNsight(lm.model)
    layers = nm.model.layers if hasattr(lm.model, "model") else nm.transformer.h
    L = lm.adapter.n_layers
    prompts, instruction = prepare(lm, task, subtask, plan, sample_ids, "transfer", target, "raw")
    src_ids = torch.tensor([instruction_prompt(lm.tokenizer, instruction).input_ids])
    out, evals_all, evals_patched = {}, 0, 0
    with torch.no_grad():
        for p in prompts:
            tgt = torch.tensor([p.target.input_ids])
            instr = torch.tensor([p.instructed.input_ids])
            T = tgt.shape[1]
            for layer_set in plan.layer_sets:
                with nm.trace(input_ids=instr):
                    instr_logits = nnsight.save(nm.output.logits[0, -1])
                with nm.trace(input_ids=src_ids):
                    ivs = nnsight.save([layers[layer].output[0, -1] for layer in layer_set])
                with nm.trace(input_ids=tgt):
                    tgt_logits = nnsight.save(nm.output.logits[0, -1])
                evals_all += L * (instr.shape[1] + src_ids.shape[1] + T)
                for pos_name, tok in zip(plan.positions, p.positions, strict=True):
                    with nm.trace(input_ids=tgt):
                        for layer, iv in zip(layer_set, ivs, strict=True):
                            layers[layer].output[0, tok] = iv
                        logits = nnsight.save(nm.output.logits[0, -1])
                    evals_all += L * T
                    evals_patched += L * T
                    lab = p.label_token
                    out[(p.sample, str(pos_name), ",".join(map(str, layer_set)))] = (
                        float(logits[lab]), float(logits[lab] - tgt_logits[lab]), float(instr_logits[lab]))
    return out, evals_all, evals_patched


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="organism-dpo", help="model name/path, or 'tiny' for the stand-in")
    ap.add_argument("--task", default="adjectives")
    ap.add_argument("--subtask", default="adj_ant")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--layers", default="pairs")
    ap.add_argument("--positions", default="first,last")
    ap.add_argument("--target", default="bare")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared 2-core box)")
    ap.add_argument("--triplets", action="store_true", help="also time an ivlens triplet sweep")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    lm = stand_in() if args.model == "tiny" else load_model(args.model)
    task = load_task(args.task)
    sample_ids = sample_indices(task, args.samples)
    plan = PatchPlan.build(args.layers, args.positions, lm.adapter.n_layers)
    print(f"model {lm.name}: {lm.adapter.n_layers} layers, d_model {lm.adapter.d_model}; {len(sample_ids)} samples × "
          f"{len(plan.layer_sets)} layer sets × {len(plan.positions)} positions = "
          f"{len(sample_ids) * len(plan.rows)} rows; torch threads {torch.get_num_threads()}", file=sys.stderr)

    patch_sweep(lm, task, args.subtask, layers=args.layers, positions=args.positions, samples=sample_ids[:2],
                target=args.target)  # warm-up (first-call allocations), not timed
    t0 = time.perf_counter()
    res = patch_sweep(lm, task, args.subtask, layers=args.layers, positions=args.positions, samples=sample_ids,
                      target=args.target)
    ivlens_s = time.perf_counter() - t0
    stats = res.stats[lm.name]
    print(f"ivlens: {ivlens_s:.2f} s", file=sys.stderr)

    t0 = time.perf_counter()
    naive, naive_all, naive_patched = naive_loop(lm, task, args.subtask, plan, sample_ids, args.target)
    naive_s = time.perf_counter() - t0
    print(f"naive (paper-style, one nnsight trace per run): {naive_s:.2f} s", file=sys.stderr)

    diff = 0.0
    for r in res.rows.itertuples():
        logit, delta, _ = naive[(r.sample, r.position, r.layers)]
        diff = max(diff, abs(logit - r.logit), abs(delta - r.delta_logit_vs_target))
    agree = diff <= args.tolerance and len(naive) == len(res.rows)
    print(f"agreement: max |naive − ivlens| = {diff:.2e} over {len(res.rows)} rows "
          f"({'OK' if agree else 'MISMATCH'}, tolerance {args.tolerance:g})", file=sys.stderr)
    print(f"speedup: {naive_s / ivlens_s:.1f}×", file=sys.stderr)
    print(f"layer-token evaluations of the patched rows: naive {naive_patched:,}, ivlens {stats.executed_evals:,}, "
          f"minimum {stats.minimal_evals:,} (ivlens/minimum {stats.executed_evals / stats.minimal_evals:.3f}); "
          f"all runs: naive {naive_all:,}, ivlens {stats.executed_evals + stats.baseline_evals:,}", file=sys.stderr)
    result = {"naive_s": round(naive_s, 3), "ivlens_s": round(ivlens_s, 3), "speedup": round(naive_s / ivlens_s, 1),
              "executed_evals": stats.executed_evals, "minimal_evals": stats.minimal_evals,
              "naive_evals": naive_patched, "naive_evals_all_runs": naive_all,
              "ivlens_evals_all_runs": stats.executed_evals + stats.baseline_evals,
              "rows": len(res.rows), "unique_rows": stats.unique_rows, "max_abs_diff": diff, "agree": agree,
              "model": lm.name, "n_layers": lm.adapter.n_layers, "d_model": lm.adapter.d_model,
              "samples": len(sample_ids), "layers": args.layers, "positions": args.positions,
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    if args.triplets:
        t0 = time.perf_counter()
        tri = patch_sweep(lm, task, args.subtask, layers="triplets", positions=args.positions, samples=sample_ids,
                          target=args.target)
        result["triplets_s"] = round(time.perf_counter() - t0, 3)
        result["triplet_rows"] = len(tri.rows)
        print(f"ivlens triplet sweep: {len(tri.rows)} rows in {result['triplets_s']:.2f} s", file=sys.stderr)
    print(json.dumps(result))
    if not agree:
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
