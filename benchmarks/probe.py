"""Cost of the probe fits, old (one ``torch.optim.LBFGS`` run per fit) against new (one batched, preconditioned
solve per layer and probe), on the same instruction vectors, and the accuracy differences between them.

    python benchmarks/probe.py                              # SmolLM2-135M IVs, 7 layers, adjectives + animals
    python benchmarks/probe.py --ivs DIR [DIR ...]          # IVs already collected (``ivs/<model>`` directories)
    python benchmarks/probe.py --step [--model organism-shape]   # the whole probe step (probe_run), old vs new
    python benchmarks/probe.py --synthetic [--n 1600 --d 4096 --classes 8]   # one synthetic layer, every step

The default collects the IVs of ``adjectives`` and ``animals`` (4 subtasks × ~200 rephrasings, what the main
job's probe step uses) from SmolLM2-135M-Instruct at 7 layers once (kept in ``--cache``), then fits every layer's
probes as ``ivlens probe`` does (``all``, ``task:adjectives``, ``task:animals``; per probe 5 CV folds, 5
shuffled-label folds, the held-out phrasings and the refit on all rows for the saved weights) with the former
sequential fits (``tests/probing_reference.py``) and with the batch of
:func:`ivlens.probing.probes.probe_layer_fitted` (``layer_fits(...).solve``). The organism-sized problem is a main
job's IVs: ``--ivs RUN/probe/ivs/base RUN/probe/ivs/sft RUN/probe/ivs/dpo`` (3 models x 2 tasks x every layer).
Prints CPU seconds (this process; fair on a shared machine), the ratio, the largest difference of every
accuracy, fit by fit (cv and shuffled folds, held-out splits) and of the layer means, the machine's GEMM rate
(fp32, 2 threads, best of 5 of a 2048×2048 by 2048×8192 product) and the times normalised to 56 GFLOP/s, then one
JSON line.

``--step`` runs the whole probe step (:func:`ivlens.probing.run.probe_run`: IV collection, probes, LDA, PCA,
similarities, weights, figures) on adjectives + animals twice, with the former fits patched in and with the new
ones, and prints the CPU seconds of each and the largest accuracy difference. ``--model organism-shape`` (the
default for ``--step``) is a random OLMo-2 of the organism's shape (6 layers, d_model 256, 4 heads, d_mlp 512;
``ivlens.testing.tiny``): one of the main job's three probe models, without the build.

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
    layer_fits,
    lda_2d,
    pca_2d,
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


def compare(ivs: list[Path], cfg: ProbeConfig, skip_old: bool) -> dict:
    """Old and new fits of every layer and probe of the stored IVs (one ``ivs/<model>`` directory per model): CPU
    seconds, and the largest accuracy differences, fit by fit (``cv`` and ``shuffled`` folds, ``heldout`` splits)
    and of the layer's means (``cv_mean``, ``shuffled_mean``, ``heldout_acc``)."""
    from ivlens.probing.collect import IVStore
    from ivlens.probing.run import probe_specs

    t_old = t_new = 0.0
    kinds = ("cv", "shuffled", "heldout")
    diffs = {k: 0.0 for k in kinds} | {"cv_mean": 0.0, "shuffled_mean": 0.0, "heldout_acc": 0.0}
    rows = []
    for directory in ivs:
        store = IVStore(directory)
        specs = probe_specs(store.labels(), "instructions")
        for layer in store.layers:
            X = store.load_layer(layer)
            for probe, _, mask, y, groups, _ in specs:
                t = time.process_time()  # what probe_layer_fitted does: one batch, then the table row
                fits = layer_fits(y, groups, cfg, refit=True)
                acc, _, _, _ = fits.solve(X[mask], cfg)
                new = {k: acc[fits.rows(k)] for k in kinds}
                dt_new = time.process_time() - t
                t_new += dt_new
                means_new = {"cv_mean": new["cv"].mean(), "shuffled_mean": new["shuffled"].mean(),
                             "heldout_acc": new["heldout"].mean() if len(new["heldout"]) else np.nan}
                line = {"model": directory.name, "layer": layer, "probe": probe, "n": int(mask.sum()),
                        "new_s": round(dt_new, 3), **{f"new_{k}": round(float(v), 4) for k, v in means_new.items()}}
                if not skip_old:
                    t = time.process_time()
                    old = ref.layer_accuracies(X[mask], y, groups, cfg)
                    ref.SequentialProbe(cfg.C, cfg.max_iter).fit(X[mask], y)  # the refit for the weights
                    dt_old = time.process_time() - t
                    t_old += dt_old
                    summary = ref.summary(old, y)
                    means_old = {k: getattr(summary, k) for k in means_new}
                    line |= {"old_s": round(dt_old, 3), **{f"old_{k}": round(v, 4) for k, v in means_old.items()}}
                    for k in kinds:
                        if len(new[k]):
                            diffs[k] = max(diffs[k], float(np.abs(new[k] - old[k]).max()))
                    for k in means_new:
                        if not np.isnan(means_new[k]):
                            diffs[k] = max(diffs[k], abs(float(means_new[k]) - means_old[k]))
                rows.append(line)
                print("  ".join(f"{k} {v}" for k, v in line.items()), flush=True)
    return {"old_cpu_s": t_old, "new_cpu_s": t_new, "max_abs_diff": diffs, "fits": rows}


def organism_shape(cache: Path) -> Path:
    """A random OLMo-2 checkpoint of the organism's shape (and the tiny test tokenizer) under ``cache``."""
    from ivlens.testing.tiny import save_tiny_checkpoint

    d = cache / "organism-shape"
    if not (d / "config.json").exists():
        save_tiny_checkpoint(d, "olmo2", n_layers=6, d_model=256, n_heads=4)
    return d


def whole_step(model: str, out: Path) -> dict:
    """CPU seconds of ``probe_run([model], [adjectives, animals])`` with the former fits and with the new ones."""
    import shutil
    from contextlib import nullcontext
    from unittest import mock

    import ivlens.probing.run as run_module

    def former(X, y, groups, cfg, refit=False):  # what analyse_store did before: per layer probe_layer, then a refit
        return [(ref.probe_layer(Xl, y, groups, cfg), ref.SequentialProbe(cfg.C, cfg.max_iter).fit(Xl, y) if refit
                 else None) for Xl in X]

    res = {}
    tables = {}
    for name, patch in (("old", former), ("new", None)):
        shutil.rmtree(out / name, ignore_errors=True)
        with mock.patch.object(run_module, "probe_layers", patch) if patch else nullcontext():
            t, w = time.process_time(), time.perf_counter()
            r = run_module.probe_run([model], ["adjectives", "animals"], out=out / name)
            res[f"{name}_cpu_s"], res[f"{name}_wall_s"] = time.process_time() - t, time.perf_counter() - w
        tables[name] = r.accuracy.set_index(["probe", "layer"])
        print(f"{name}: {res[f'{name}_cpu_s']:.1f} CPU s, {res[f'{name}_wall_s']:.1f} s wall", flush=True)
    diff = (tables["new"][["cv_mean", "shuffled_mean", "heldout_acc"]]
            - tables["old"][["cv_mean", "shuffled_mean", "heldout_acc"]]).abs().max()
    res["max_abs_diff"] = {k: float(v) for k, v in diff.items()}
    res["rows"] = len(tables["new"])
    return res


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
    ap.add_argument("--model", default=None, help="smollm2-135m-instruct (default), or for --step organism-shape")
    ap.add_argument("--layers", default="0,5,10,15,20,25,29", help="layers whose IVs are collected")
    ap.add_argument("--ivs", type=Path, nargs="+", help="use IVs already collected instead (ivs/<model> directories, "
                    "e.g. a main job's probe/ivs/base probe/ivs/sft probe/ivs/dpo)")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("IVLENS_CACHE", "/tmp")) / "bench-probe-ivs")
    ap.add_argument("--skip-old", action="store_true", help="time the new fits only")
    ap.add_argument("--step", action="store_true", help="the whole probe step, old vs new")
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
    rate = gemm_rate()
    norm = rate / REFERENCE_RATE
    if a.step:
        model = a.model or "organism-shape"
        if model == "organism-shape":
            model = str(organism_shape(a.cache))
        res = whole_step(model, a.cache / "step-runs")
        print(f"GEMM rate {rate / 1e9:.1f} GFLOP/s (fp32, 2 threads); normalised = seconds x {norm:.2f}")
        for k in ("old", "new"):
            print(f"probe step, {k}: {res[f'{k}_cpu_s']:7.1f} CPU s   normalised to 56 GFLOP/s "
                  f"{res[f'{k}_cpu_s'] * norm:7.1f} s")
        print(f"ratio old / new   {res['old_cpu_s'] / res['new_cpu_s']:.2f}x  ({res['rows']} layer x probe rows)")
        print("largest |new - old|: " + ", ".join(f"{k} {v:.4f}" for k, v in res["max_abs_diff"].items()))
        print(json.dumps(res | {"gemm_gflops": round(rate / 1e9, 1), "model": model}))
        return
    layers = [int(x) for x in a.layers.split(",")]
    model = a.model or "smollm2-135m-instruct"
    ivs = a.ivs or [collect(model, layers, a.cache / model)]
    res = compare(ivs, ProbeConfig(seed=a.seed), a.skip_old)
    print(f"GEMM rate {rate / 1e9:.1f} GFLOP/s (fp32, 2 threads); normalised = seconds x {norm:.2f}")
    if not a.skip_old:
        print(f"old (sequential)  {res['old_cpu_s']:7.1f} CPU s   normalised to 56 GFLOP/s {res['old_cpu_s'] * norm:7.1f} s")
    print(f"new (batched)     {res['new_cpu_s']:7.1f} CPU s   normalised to 56 GFLOP/s {res['new_cpu_s'] * norm:7.1f} s")
    if not a.skip_old:
        print(f"ratio old / new   {res['old_cpu_s'] / res['new_cpu_s']:.2f}x")
        print("largest |new - old|: " + ", ".join(f"{k} {v:.4f}" for k, v in res["max_abs_diff"].items()))
    summary = {k: v for k, v in res.items() if k != "fits"} | {"gemm_gflops": round(rate / 1e9, 1),
                                                                "ivs": [str(p) for p in ivs]}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
