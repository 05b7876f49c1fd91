"""Benchmark the exact path tracer (not a timed test).

- SmolLM2-135M-Instruct (packaged GGUF) on a ~32-token prompt: surrogate + attribution graph + top-20 paths;
  then the paper's argmax tracer on the same prompt;
- each model organism (``organism-base|sft|dpo``, if built with ``ivlens organism build``) over 50 samples of the
  adjectives task.

Prints time (model loading excluded), peak memory above the loaded model, and the completeness error; ends with
one JSON line per model: ``{"model", "seconds", "peak_mb", "completeness_rel_err"}``.

    python benchmarks/trace.py [--samples 50] [--skip-smollm2]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak resident memory above the level at entry (Linux: VmHWM reset through clear_refs)."""

    def __enter__(self) -> PeakMemory:
        self.base = _status_kb("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.ru0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc) -> None:
        hwm = _status_kb("VmHWM") if self.reset else None
        if hwm is not None and self.base is not None:
            self.peak_mb = max(0, hwm - self.base) / 1024
        else:  # ru_maxrss never resets: an upper bound of what is new
            self.peak_mb = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.ru0) / 1024


PROMPT = ("Given an adjective, state its antonym. Adjective: big. Answer: small. Given an adjective, state its "
          "antonym. Adjective: happy. Answer:")


def bench_smollm2(results: list[dict]) -> None:
    from ivlens.models.load import load_model
    from ivlens.tracing import argmax_trace, build_surrogate, compute_graph, resolve_target, top_paths

    t0 = time.perf_counter()
    lm = load_model("smollm2-135m-instruct")
    print(f"SmolLM2 loaded in {time.perf_counter() - t0:.1f} s (excluded)")
    ids = lm.tokenizer(PROMPT)["input_ids"][:32]
    ad = lm.adapter
    print(f"prompt: {len(ids)} tokens; {ad.n_layers} layers × {ad.n_heads} heads "
          f"(head edge tensor {ad.n_layers * ad.n_heads * len(ids) ** 2 * 4 / 2**20:.1f} MB)")
    build_surrogate(lm.model, ids[:8])  # warm-up (first-call kernel selection), excluded
    with PeakMemory() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        sur = build_surrogate(lm.model, ids, tokenizer=lm.tokenizer)
        t_sur = time.perf_counter() - t0
        tgt = resolve_target(lm.tokenizer, None, sur.logits[-1])
        graph = compute_graph(sur, tgt)
        t_graph = time.perf_counter() - t0 - t_sur
        paths = top_paths(sur, tgt, k=20, beam=256)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"exact: surrogate {t_sur:.2f} s, graph {t_graph:.2f} s, top-20 paths {seconds - t_sur - t_graph:.2f} s; "
          f"total {seconds:.2f} s wall ({cpu:.2f} s CPU over all threads; wall time is inflated when other "
          f"processes share the cores: load average {__import__('os').getloadavg()[0]:.1f}), peak +{mem.peak_mb:.0f} MB, completeness error {graph.completeness_rel_err:.2e}")
    print(f"  top path: {paths[0].describe(sur.tokens)}")
    t0 = time.perf_counter()
    arg = argmax_trace(sur, tgt, threshold_rank=10, max_paths=1000, beam=1000)
    t_arg = time.perf_counter() - t0
    print(f"argmax tracer: {t_arg:.2f} s (on the built surrogate), {len(arg.paths)}/{arg.n_enumerated} paths kept; "
          f"cosine {arg.cosine:.3f}, norm ratio {arg.norm_ratio:.3f} vs the real logits")
    # "seconds" is the target quantity: the exact graph (surrogate + edge contributions) of one prompt;
    # the top-K path search on that graph is reported beside it.
    results.append({"model": "smollm2-135m-instruct", "seconds": round(t_sur + t_graph, 3),
                    "seconds_with_top20_paths": round(seconds, 3), "peak_mb": round(mem.peak_mb, 1),
                    "completeness_rel_err": graph.completeness_rel_err, "n_tokens": len(ids), "cpu_seconds": round(cpu, 3),
                    "argmax_seconds": round(t_arg, 3), "argmax_cosine": arg.cosine})


def bench_organisms(results: list[dict], n_samples: int) -> None:
    from ivlens.models.load import ModelLoadError, load_model
    from ivlens.tasks import instructed_prompt, label_token_ids, load_task
    from ivlens.tasks.selection import select_samples
    from ivlens.tracing import Target, build_surrogate, compute_graph

    task = load_task("adjectives")
    for name in ("organism-base", "organism-sft", "organism-dpo"):
        try:
            lm = load_model(name)
        except (ModelLoadError, FileNotFoundError) as e:
            print(f"{name}: skipped ({e})")
            continue
        samples = select_samples(task, n_samples, 0)
        prompts = []
        for s in samples:
            p = instructed_prompt(lm.tokenizer, task, s, task.subtasks["adj_ant"].instruction)
            prompts.append((list(p.input_ids), label_token_ids(lm.tokenizer, p, s.answer("adj_ant"))[0]))
        err = 0.0
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            for ids, answer in prompts:
                g = compute_graph(build_surrogate(lm.model, ids), Target.logit(answer))
                err = max(err, g.completeness_rel_err)
            seconds = time.perf_counter() - t0
        print(f"{name}: {len(prompts)} samples in {seconds:.2f} s ({seconds / len(prompts) * 1e3:.0f} ms each), "
              f"peak +{mem.peak_mb:.0f} MB, max completeness error {err:.2e}")
        results.append({"model": name, "seconds": round(seconds, 3), "peak_mb": round(mem.peak_mb, 1),
                        "completeness_rel_err": err, "n_samples": len(prompts)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--skip-smollm2", action="store_true")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    results: list[dict] = []
    if not args.skip_smollm2:
        bench_smollm2(results)
    bench_organisms(results, args.samples)
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
