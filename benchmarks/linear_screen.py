"""Benchmark: ``--screen K`` against the exact sweep of every layer set (recall@K), and how much of each patch the
linear estimate explains.

    IVLENS_CACHE=/work/cache/v5 python benchmarks/linear_screen.py     # the organisms, the main job's patch step
    python benchmarks/linear_screen.py --model smollm2-135m-instruct --samples 3 --targets formatted \\
        --k 10 50 100 200                                              # SmolLM2's 4,060 triplets
    python benchmarks/linear_screen.py --model tiny --samples 8        # a random OLMo-2 stand-in (no organism)
    python benchmarks/linear_screen.py --rows runs/smollm2/patch/adjectives --k 5 10 20   # a finished sweep's rows

Per model and target: (a) the exact sweep of every set (``layers``, default triplets) with the linear estimate on
(:func:`ivlens.patching.patch_sweep`), timed; (b) the screened sweep ``screen=K`` for every ``K``, timed, checked
against (a) (its ranking is (a)'s mean linear estimates; its rows are (a)'s rows of the same sets). Printed:

- **recall@K** per position and set size: the share of the exact top ``K`` sets (by ``|mean effect|`` over the
  samples) that the screen's top ``K`` (by ``|mean linear estimate|``) holds
  (:func:`ivlens.patching.screen.recall_at_k`), with a 95 % bootstrap CI over samples (both rankings redrawn
  together) and its control, chance: ``K / n_sets`` (``K`` sets drawn at random);
- the linear estimate's R² per set size (:func:`ivlens.patching.linearity.linearity_table`);
- times: CPU seconds and wall of (a) and of each (b), the machine's GEMM rate (fp32, 2 threads, best of 5 of a
  2048×2048 @ 2048×8192) and the times normalised to 56 GFLOP/s (``seconds × rate / 56``).

With ``--rows RUN_DIR`` nothing runs: recall@K and R² are read off the rows of a finished exact sweep of every
set with the linear estimate (``ivlens patch`` or a study's patch step, e.g. pairs at the first position): the
screen's ranking is the rows' mean estimates, the same ranking ``--screen K`` computes (checked above: ``ranking
vs exact sweep's mean estimates``), so the recall is the one ``--screen K`` would reach on those samples.

Ends with one JSON line (``recall``: a list of records; ``times``; ``gemm_gflops``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from gemm import gemm_gflops  # noqa: E402

import ivlens.organism  # noqa: E402, F401  (registers the organism-* names)
from ivlens.models.load import LoadedModel, load_model  # noqa: E402
from ivlens.patching import patch_sweep  # noqa: E402
from ivlens.patching.linear import ESTIMATED  # noqa: E402
from ivlens.patching.linearity import linearity_table, summary_lines  # noqa: E402
from ivlens.patching.screen import recall_at_k, top_k  # noqa: E402

EFFECT = "delta_logit_vs_target"
KEY = ["model", "sample", "position", "layers"]


def timed(fn):
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c, time.perf_counter() - w


def models_of(names: list[str]) -> list[LoadedModel]:
    if names == ["tiny"]:
        from ivlens.testing.tiny import tiny_model, tiny_tokenizer

        return [LoadedModel.wrap(tiny_model("olmo2", seed=0, n_layers=6, d_model=256, n_heads=4), tiny_tokenizer(),
                                 "tiny-olmo2-6x256")]
    return [load_model(n) for n in names]


def with_run_estimate(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with ``run_estimate``: the estimate the screen ranks by (:func:`ivlens.patching.screen.run_estimates`),
    the row's ``linear_estimate``, or at the target's last token that of the set's highest layer alone."""
    last = rows.pos_index == rows.n_tokens - 1
    top = rows.layers.str.split(",").str[-1]
    single = rows[rows.set_size == 1].set_index(["model", "sample", "position", "layers"])[ESTIMATED[EFFECT][0]]
    of_top = single.loc[list(zip(rows.model, rows["sample"], rows.position, top, strict=True))].to_numpy()
    return rows.assign(run_estimate=np.where(last, of_top, rows[ESTIMATED[EFFECT][0]]))


def arrays(rows: pd.DataFrame, model: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str], np.ndarray]:
    """``effect, run_estimate: [samples, positions, sets]`` of one model's rows (:func:`with_run_estimate`), the
    positions, the sets' labels and sizes (in the rows' order)."""
    r = rows[rows.model == model]
    samples = list(dict.fromkeys(r["sample"]))
    positions = list(dict.fromkeys(r.position))
    sets = list(dict.fromkeys(r.layers))
    r = r.set_index(["sample", "position", "layers"]).loc[
        pd.MultiIndex.from_product([samples, positions, sets])]
    shape = (len(samples), len(positions), len(sets))
    sizes = np.array([len(s.split(",")) for s in sets])
    return (r[EFFECT].to_numpy(float).reshape(shape), r["run_estimate"].to_numpy(float).reshape(shape),
            positions, sets, sizes)


def found_in_top(eff_mean: np.ndarray, est_mean: np.ndarray, k: int) -> int:
    """How many of the estimate's top ``k`` reach the exact ``k``-th largest ``|effect|`` (ties count, as in
    :func:`ivlens.patching.screen.recall_at_k`)."""
    bar = np.sort(np.abs(eff_mean))[::-1][k - 1]
    return int((np.abs(eff_mean[top_k(est_mean, k)]) >= bar).sum())


def bootstrap_recall(eff: np.ndarray, est: np.ndarray, cols: np.ndarray, k: int, n_boot: int, seed: int
                     ) -> tuple[float, float]:
    """95 % percentile CI of recall@k over samples drawn with replacement (exact and screen rankings redrawn
    together) for the sets ``cols`` of one position: ``eff, est: [samples, sets]``."""
    rng = np.random.default_rng(seed)
    n = eff.shape[0]
    vals = []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        vals.append(found_in_top(eff[i][:, cols].mean(0), est[i][:, cols].mean(0), k) / k)
    return float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))


def recall_records(rows: pd.DataFrame, target: str, ks: list[int], n_boot: int) -> list[dict]:
    """recall@K per (model, position, set size ≥ 2) of one exact sweep's rows (:func:`with_run_estimate` applied),
    the screen ranking by the rows' mean estimates: ``found`` (ties with the exact K-th count, as in
    :func:`ivlens.patching.screen.recall_at_k`), a 95 % bootstrap CI over samples and chance ``K / n_sets``."""
    recs = []
    for model in dict.fromkeys(rows.model):
        eff, est, positions, sets, sizes = arrays(rows, model)
        for pi, position in enumerate(positions):
            for size in sorted(set(sizes[sizes >= 2].tolist())):
                cols = np.flatnonzero(sizes == size)
                for k in ks:
                    kk = min(k, len(cols))
                    found = found_in_top(eff[:, pi, cols].mean(0), est[:, pi, cols].mean(0), kk)
                    lo, hi = bootstrap_recall(eff[:, pi], est[:, pi], cols, kk, n_boot, seed=k)
                    recs.append({"model": model, "target": target, "position": position, "set_size": int(size),
                                 "n_sets": len(cols), "k": kk, "found": found, "recall": found / kk, "lo": lo,
                                 "hi": hi, "chance": kk / len(cols)})
    return recs


def from_rows(run_dir: str, ks: list[int], n_boot: int) -> int:
    """``--rows``: recall@K and the linear estimate's R² of a finished sweep, read off its rows (nothing runs)."""
    from ivlens.runs import RunDir

    rows = RunDir.open(run_dir).read_table("patch")
    if ESTIMATED[EFFECT][0] not in rows or rows[ESTIMATED[EFFECT][0]].isna().all():
        sys.exit(f"--rows {run_dir}: its rows have no linear estimate (run the sweep with --linear-estimate on)")
    if not (rows.set_size >= 2).any():
        sys.exit(f"--rows {run_dir}: its rows have no set of two or more layers (run pairs, triplets or N-sets)")
    rows = with_run_estimate(rows)
    target = str(rows["target"].iloc[0]) if "target" in rows else "?"
    n = rows["sample"].nunique()
    print(f"== {run_dir}: {n} samples, {rows.layers.nunique()} sets, read off the rows (nothing run) ==")
    for line in summary_lines(linearity_table(rows)):
        print("  " + line)
    recs = recall_records(rows, target, ks, n_boot)
    for r in recs:
        print(f"  {r['model']} · {r['position']} · size {r['set_size']}: recall@{r['k']} = {r['found']}/{r['k']} = "
              f"{r['recall']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}] (chance {r['chance']:.3f}; of {r['n_sets']} sets)")
    print(json.dumps({"recall": recs, "samples": int(n), "rows": str(run_dir)}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=["organism-base", "organism-sft", "organism-dpo"])
    ap.add_argument("--task", default="adjectives")
    ap.add_argument("--subtask", default="adj_ant")
    ap.add_argument("--layers", default="triplets")
    ap.add_argument("--positions", default="first,last")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--targets", nargs="+", default=["bare", "formatted"])
    ap.add_argument("--k", type=int, nargs="+", default=[3, 5, 10])
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", metavar="RUN_DIR", help="read recall@K off a finished sweep's rows instead of running")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.rows:
        return from_rows(args.rows, args.k, args.boot)
    rate = gemm_gflops()
    torch.set_num_threads(args.threads)
    print(f"GEMM rate: {rate:.1f} GFLOP/s (fp32, 2 threads; shared machine); times × {rate / 56:.2f} = at 56 GFLOP/s")
    lms = models_of(args.model)
    recs, times = [], []
    for target in args.targets:
        common = {"layers": args.layers, "positions": args.positions, "samples": args.samples, "target": target,
                  "chunk_size": args.samples}
        full, cpu, wall = timed(lambda common=common: patch_sweep(lms, args.task, args.subtask, **common))
        full.rows = with_run_estimate(full.rows)
        n_sets = full.rows.groupby("model").layers.nunique().iloc[0]
        times.append({"target": target, "run": "exact", "sets": int(n_sets), "cpu_s": cpu, "wall_s": wall,
                      "cpu_s_at_56": cpu * rate / 56})
        print(f"\n== {args.task}/{args.subtask} · {target} target · {args.samples} samples · {args.layers} "
              f"({n_sets} sets) ==")
        print(f"exact sweep of every set (with the estimate): CPU {cpu:.1f} s, wall {wall:.1f} s "
              f"({cpu * rate / 56:.1f} CPU s at 56 GFLOP/s)")
        for line in summary_lines(linearity_table(full.rows)):
            print("  " + line)
        for k in args.k:
            scr, cpu_k, wall_k = timed(lambda k=k, common=common: patch_sweep(lms, args.task, args.subtask,
                                                                               screen=k, **common))
            kept = int(scr.rows.groupby("model").layers.nunique().max())
            times.append({"target": target, "run": f"screen {k}", "sets": kept, "cpu_s": cpu_k, "wall_s": wall_k,
                          "cpu_s_at_56": cpu_k * rate / 56})
            # the screened run is the exact sweep restricted to its sets, ranked by the exact sweep's estimates
            both = scr.rows.merge(full.rows[[*KEY, "logit", "linear_estimate"]], on=KEY, suffixes=("", "_full"))
            d_logit = float((both.logit - both.logit_full).abs().max())
            d_est = float((both.linear_estimate - both.linear_estimate_full).abs().max())
            mean_est = full.rows.groupby(["model", "position", "layers"]).run_estimate.mean()
            at = list(zip(scr.screen.model, scr.screen.position, scr.screen.layers, strict=True))
            d_rank = float(np.abs(scr.screen.estimate_mean.to_numpy() - mean_est.loc[at].to_numpy()).max())
            print(f"--screen {k}: {kept} of {n_sets} sets run exactly; CPU {cpu_k:.1f} s, wall {wall_k:.1f} s "
                  f"({cpu / max(cpu_k, 1e-9):.1f}× less CPU than the exact sweep); rows vs exact sweep: max |Δ logit| "
                  f"{d_logit:.1e}, max |Δ estimate| {d_est:.1e}; ranking vs exact sweep's mean estimates "
                  f"{d_rank:.1e}")
            rec = recall_at_k(scr.screen, full.rows, k)
            for r in rec.itertuples():
                eff, est, positions, sets, sizes = arrays(full.rows, r.model)
                cols = np.flatnonzero(sizes == r.set_size)
                pi = positions.index(r.position)
                lo, hi = bootstrap_recall(eff[:, pi], est[:, pi], cols, r.k, args.boot, seed=k)
                chance = r.k / r.n_sets
                recs.append({"model": r.model, "target": target, "position": r.position, "set_size": r.set_size,
                             "n_sets": r.n_sets, "k": r.k, "found": r.found, "recall": r.recall, "lo": lo, "hi": hi,
                             "chance": chance})
                print(f"  {r.model} · {r.position} · size {r.set_size}: recall@{r.k} = {r.found}/{r.k} = "
                      f"{r.recall:.2f} [{lo:.2f}, {hi:.2f}] (chance {chance:.2f}; of {r.n_sets} sets)")
    print(json.dumps({"recall": recs, "times": times, "gemm_gflops": rate, "samples": args.samples,
                      "models": [lm.name for lm in lms], "layers": args.layers}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
