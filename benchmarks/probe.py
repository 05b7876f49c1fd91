"""Cost of the probe fits, old (one ``torch.optim.LBFGS`` run per fit) against new (one batched, preconditioned
solve per layer and probe), on the same instruction vectors, and the accuracy differences between them.

    python benchmarks/probe.py                              # SmolLM2-135M IVs, 7 layers, adjectives + animals
    python benchmarks/probe.py --ivs DIR                    # IVs already collected (an ``ivs/<model>`` directory)
    python benchmarks/probe.py --synthetic [--n 1600 --d 4096 --classes 8]   # one synthetic layer, every step

The default collects the IVs of ``adjectives`` and ``animals`` (4 subtasks × ~200 rephrasings, what the main
job's probe step uses) from SmolLM2-135M-Instruct at 7 layers once (kept in ``--cache``), then fits every layer's
probes as ``ivlens probe`` does (``all``, ``task:adjectives``, ``task:animals``; per probe 5 CV folds, 5
shuffled-label folds, the held-out phrasings and the refit on all rows for the saved weights) with the former
sequential fits (``tests/probing_reference.py``) and with :func:`ivlens.probing.probes.probe_layer_fitted`.
Prints CPU seconds (this process; fair on a shared machine), the ratio, the largest difference of every
accuracy (cv / shuffled / held-out), the machine's GEMM rate (fp32, 2 threads, best of 5 of a 2048×2048 by
2048×8192 product) and the times normalised to 56 GFLOP/s, then one JSON line.

``--synthetic`` times each step of one layer's analysis on synthetic IVs (a planted direction per class): the CV
probe, the shuffled control, held-out, LDA, PCA and the cosine matrices (``--old`` adds the former fits).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import probing_reference as ref  # noqa: E402

from ivlens.probing.probes import (  # noqa: E402
    ProbeConfig,
    class_cosine,
    cv_accuracy,
    heldout_accuracy,
    lda_2d,
    pca_2d,
    probe_layer_fitted,
    shuffled_cv_accuracy,
)

REFERENCE_RATE = 56e9  # the slow 2-core machine of issue 19


def gemm_rate() -> float:
    """fp32 FLOP/s of ``a @ b`` (2048×2048 by 2048×8192) on 2 threads, best of 5."""
    import torch

    from ivlens.scoped import torch_threads

    a, b = torch.randn(2048, 2048), torch.randn(2048, 8192)
    best = float("inf")
    with torch_threads(2):
        a @ b
        for _ in range(5):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
    return 2 * 2048 * 2048 * 8192 / best


def collect(model: str, layers: list[int], out: Path) -> Path:
    """The IVs of adjectives + animals in ``model`` at ``layers`` under ``out`` (reused when present)."""
    from ivlens.models.load import load_model
    from ivlens.probing.collect import collect_ivs
    from ivlens.probing.instructions import instruction_set

    if (out / "meta.json").exists() and json.loads((out / "meta.json").read_text())["layers"] == layers:
        return out
    lm = load_model(model)
    rows = instruction_set(["adjectives", "animals"], "instructions", None, None, None)
    collect_ivs(lm, rows, out, layers=layers)
    return out


def compare(ivs: Path, cfg: ProbeConfig, skip_old: bool) -> dict:
    """Old and new fits of every layer and probe of the stored IVs: CPU seconds and accuracy differences."""
    from ivlens.probing.collect import IVStore
    from ivlens.probing.run import probe_specs

    store = IVStore(ivs)
    specs = probe_specs(store.labels(), "instructions")
    t_old = t_new = 0.0
    diffs = {"cv_mean": 0.0, "shuffled_mean": 0.0, "heldout_acc": 0.0}
    rows = []
    for layer in store.layers:
        X = store.load_layer(layer)
        for probe, _, mask, y, groups, _ in specs:
            t = time.process_time()
            new, _ = probe_layer_fitted(X[mask], y, groups, cfg)
            dt_new = time.process_time() - t
            t_new += dt_new
            line = {"layer": layer, "probe": probe, "n": int(mask.sum()), "new_s": round(dt_new, 3),
                    **{f"new_{k}": round(getattr(new, k), 4) for k in diffs}}
            if not skip_old:
                t = time.process_time()
                old = ref.probe_layer(X[mask], y, groups, cfg)
                ref.SequentialProbe(cfg.C, cfg.max_iter).fit(X[mask], y)  # the refit for the weights
                dt_old = time.process_time() - t
                t_old += dt_old
                line |= {"old_s": round(dt_old, 3), **{f"old_{k}": round(getattr(old, k), 4) for k in diffs}}
                for k in diffs:
                    diffs[k] = max(diffs[k], abs(getattr(new, k) - getattr(old, k)))
            rows.append(line)
            print("  ".join(f"{k} {v}" for k, v in line.items()), flush=True)
    return {"old_cpu_s": t_old, "new_cpu_s": t_new, "max_abs_diff": diffs, "fits": rows}


def synthetic(a: argparse.Namespace) -> None:
    rng = np.random.default_rng(a.seed)
    y = np.arange(a.n) % a.classes
    dirs = rng.normal(size=(a.classes, a.d)) / np.sqrt(a.d)
    X = (rng.normal(size=(a.n, a.d)) + 6.0 * dirs[y] + 5.0 * rng.normal(size=a.d)).astype(np.float32)
    train = (np.arange(a.n) // a.classes) % 4 != 3
    cfg = ProbeConfig(seed=a.seed)
    steps = {
        "cv probe (5 folds)": lambda: cv_accuracy(X, y, cfg).mean,
        "shuffled control (5 folds)": lambda: shuffled_cv_accuracy(X, y, cfg).mean,
        "held-out phrasings": lambda: heldout_accuracy(X, y, train, cfg)[0],
    }
    if a.old:
        steps |= {
            "old: cv probe (5 folds)": lambda: ref.cv_accuracy(X, y, cfg).mean,
            "old: shuffled control (5 folds)": lambda: ref.shuffled_cv_accuracy(X, y, cfg).mean,
            "old: held-out phrasings": lambda: ref.heldout_accuracy(X, y, train, cfg)[0],
        }
    steps |= {
        "LDA 2-D (PCA 64 + svd)": lambda: lda_2d(X, y, a.seed)[1],
        "PCA 2-D": lambda: float(pca_2d(X, a.seed)[1].sum()),
        "cosine matrices (raw + centred)": lambda: float(class_cosine(X, y).trace()
                                                         + class_cosine(X, y, center=False).trace()),
    }
    print(f"n={a.n} d={a.d} classes={a.classes}")
    for name, fn in steps.items():
        t = time.process_time()
        value = fn()
        print(f"{name:34s} {time.process_time() - t:7.2f} CPU s   value {value:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--layers", default="0,5,10,15,20,25,29", help="layers whose IVs are collected")
    ap.add_argument("--ivs", type=Path, help="use IVs already collected here instead")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("IVLENS_CACHE", "/tmp")) / "bench-probe-ivs")
    ap.add_argument("--skip-old", action="store_true", help="time the new fits only")
    ap.add_argument("--synthetic", action="store_true", help="one synthetic layer, every step (below)")
    ap.add_argument("--old", action="store_true", help="--synthetic: also the former sequential fits")
    ap.add_argument("--n", type=int, default=1600, help="--synthetic: instructions (8 subtasks x 200)")
    ap.add_argument("--d", type=int, default=4096, help="--synthetic: d_model")
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.synthetic:
        synthetic(a)
        return
    layers = [int(x) for x in a.layers.split(",")]
    ivs = a.ivs or collect(a.model, layers, a.cache / a.model)
    rate = gemm_rate()
    res = compare(ivs, ProbeConfig(seed=a.seed), a.skip_old)
    norm = rate / REFERENCE_RATE
    print(f"GEMM rate {rate / 1e9:.1f} GFLOP/s (fp32, 2 threads); normalised = seconds x {norm:.2f}")
    if not a.skip_old:
        print(f"old (sequential)  {res['old_cpu_s']:7.1f} CPU s   normalised to 56 GFLOP/s {res['old_cpu_s'] * norm:7.1f} s")
    print(f"new (batched)     {res['new_cpu_s']:7.1f} CPU s   normalised to 56 GFLOP/s {res['new_cpu_s'] * norm:7.1f} s")
    if not a.skip_old:
        print(f"ratio old / new   {res['old_cpu_s'] / res['new_cpu_s']:.2f}x")
        print("largest |new - old|: " + ", ".join(f"{k} {v:.4f}" for k, v in res["max_abs_diff"].items()))
    summary = {k: v for k, v in res.items() if k != "fits"} | {"gemm_gflops": round(rate / 1e9, 1), "ivs": str(ivs)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
