"""Answer-level scoring vs first-token eval: ``ivlens eval --score answer`` against ``--score first-token``.

    python benchmarks/answer_scoring.py [--model smollm2-135m-instruct] [--samples 20] [--labels 150]
                                        [--old REF] [--repeats 1] [--patch-samples 0]

Writes a user task (``count``: object-counting queries from BIG-bench with digit answers, label space
``0 … labels−1``) to a temporary directory, then runs, each as its own process (so CPU time is the child's):

1. ``ivlens eval --score first-token`` (the baseline),
2. ``ivlens eval --score answer`` (this checkout: each prompt once, candidates scored against its cache),
3. with ``--old REF`` (a git revision, e.g. ``main``): ``ivlens eval --score answer`` of that revision's
   ``ivlens`` package (``git archive`` into a temporary directory, same Python environment): one forward of
   prompt + label per candidate label.

Prints wall and CPU seconds per run, the machine's fp32 GEMM rate (``torch.set_num_threads(2)``, best of 5 of a
2048×2048 by 2048×8192 product) and every time normalised to 56 GFLOP/s (``seconds × rate / 56``), the ratio
answer / first-token (target ≤ 3), each run's ``--dry-run`` estimate (made in this process just before the run,
calibrated on the machine as it is then) over its measured wall time (target within [0.5, 2]), and the largest
difference between the new and old runs' ``answer_*`` columns (log-probabilities: max |Δ|, target ≤ 1e-4; ranks
and flags: rows that differ). Then one JSON line. Model loading
is in every run's time; its own time (one ``load_model`` in this process) is printed beside them, so the ratio of
the eval work alone can be read too. On a shared machine, use ``--repeats`` and read the medians.

``--patch-samples N`` (with ``--old``) also times ``ivlens patch --score answer --layers "15;20;25" --positions
first,last --samples N`` on the same task, new vs old, and compares the ``patch`` and ``baselines`` tables' answer
metrics (``logit``: max |Δ|; ``rank``, ``top1``, ``ia_top1``: rows that differ; an older tree's ``ia`` is read as
``ia_top1``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gemm import gemm_gflops

REPO = Path(__file__).resolve().parents[1]
ANSWER_COLUMNS = ("answer_logprob", "answer_rank", "answer_rank_in_space", "answer_top1", "answer_ia",
                  "answer_accuracy")


def write_task(directory: Path, n_samples: int, n_labels: int) -> Path:
    """A user task of ``n_samples`` counting queries (answers as digits) with label space ``0 … n_labels − 1``."""
    data = json.loads((REPO / "ivlens/tasks/data/bigbench/object_counting.json").read_text())
    rows = []
    for ex in data["examples"]:
        digits = [t for t in ex["target"] if t.isdigit()]
        if digits and int(digits[0]) < n_labels and ex["input"] not in {r[0] for r in rows}:
            rows.append((ex["input"], digits[0]))
        if len(rows) == n_samples:
            break
    import csv

    with open(directory / "counting.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["query", "count"])
        w.writerows(rows)
    labels = ", ".join(f'"{i}"' for i in range(n_labels))
    spec = directory / "counting.yaml"
    spec.write_text("name: counting\ndata: counting.csv\nfield: Question\nsubtasks:\n  count:\n"
                    "    instruction: Count the objects in the question and answer with a number.\n"
                    f"    label_space: [{labels}]\n")
    return spec


def run_eval(model: str, task: Path, score: str, out: Path, pythonpath: Path | None) -> dict:
    """One ``ivlens eval`` process: wall and CPU seconds (user + system of the child)."""
    return run_ivlens(["eval", "--model", model, "--task", str(task), "--score", score], out, pythonpath)


def run_ivlens(args: list[str], out: Path, pythonpath: Path | None) -> dict:
    """One ``ivlens ARGS --out OUT`` process (the package at ``pythonpath``, else this checkout's): wall and CPU
    seconds (user + system of the child)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    cmd = [sys.executable, "-m", "ivlens", *args, "--out", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=pythonpath or REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu}


def dry_run_seconds(model: str, task: Path, score: str) -> float:
    """The ``--dry-run`` estimate of the same command, made now in this process (``benchmarks/estimate_check.py``)."""
    from estimate_check import estimate

    return float(estimate(["eval", "--model", model, "--task", str(task), "--score", score])["total_seconds"])


def read_results(out: Path):
    from ivlens.runs import RunDir

    return RunDir.open(out).read_table("results").sort_values(["sample", "subtask", "condition"]).reset_index(
        drop=True)


def compare(new, old) -> dict:
    """Largest |Δ| of the log-probabilities and the count of rows whose ranks or flags differ."""
    diff = {"answer_logprob_max_abs": float((new["answer_logprob"] - old["answer_logprob"]).abs().max())}
    for c in ANSWER_COLUMNS[1:]:
        diff[f"{c}_rows_differing"] = int((new[c] != old[c]).sum())
    return diff


def patch_comparison(a, task: Path, tmp: Path, old_dir: Path) -> dict:
    """``ivlens patch --score answer`` new vs old on ``task``: times and the largest differences of the metrics."""
    from ivlens.runs import RunDir

    args = ["patch", "--model", a.model, "--task", str(task), "--layers", "15;20;25", "--positions", "first,last",
            "--samples", str(a.patch_samples), "--score", "answer", "--no-figures"]
    out = {"new": run_ivlens(args, tmp / "patch-new", None), "old": run_ivlens(args, tmp / "patch-old", old_dir)}
    diff = {}
    for table, keys in (("patch", ["sample", "position", "layers"]), ("baselines", ["sample", "run"])):
        new, old = (RunDir.open(tmp / d).read_table(table).sort_values(keys).reset_index(drop=True)
                    for d in ("patch-new", "patch-old"))
        old = old.rename(columns={"ia": "ia_top1"})  # an older tree's name for it (``ivlens.runs.FORMAT_CHANGES``)
        diff[f"{table}_logit_max_abs"] = float((new["logit"] - old["logit"]).abs().max())
        for c in ("rank", "top1", "ia_top1"):
            diff[f"{table}_{c}_rows_differing"] = int((new[c] != old[c]).sum())
    out["diff"] = diff
    return out


def extract(ref: str, directory: Path) -> Path:
    """The ``ivlens`` package of git revision ``ref``, unpacked under ``directory``."""
    archive = subprocess.run(["git", "archive", ref, "ivlens"], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return directory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--labels", type=int, default=150)
    ap.add_argument("--old", default=None, help="git revision whose answer scoring to compare with (e.g. main)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each eval (medians reported)")
    ap.add_argument("--patch-samples", type=int, default=0, help="also time patch --score answer (needs --old)")
    a = ap.parse_args()
    rate = gemm_gflops()
    with tempfile.TemporaryDirectory(prefix="ivlens-answer-bench-") as tmp:
        tmp = Path(tmp)
        task = write_task(tmp, a.samples, a.labels)
        from ivlens.models.load import load_model

        t = time.perf_counter()
        load_model(a.model)
        load_s = time.perf_counter() - t
        runs = {"first-token": ("first-token", None), "answer": ("answer", None)}
        if a.old:
            old_dir = tmp / "old"
            old_dir.mkdir()
            runs["answer (old)"] = ("answer", extract(a.old, old_dir))
        times: dict[str, dict] = {}
        for name, (score, path) in runs.items():
            est = None if path is not None else dry_run_seconds(a.model, task, score)
            got = [run_eval(a.model, task, score, tmp / f"{name.replace(' ', '_')}-{i}", path)
                   for i in range(a.repeats)]
            times[name] = {k: statistics.median(g[k] for g in got) for k in ("wall", "cpu")}
            if est is not None:
                times[name]["dry_run"] = est
        new = read_results(tmp / "answer-0")
        diff = compare(new, read_results(tmp / "answer_(old)-0")) if a.old else {}
        n_rows = len(new)
        patch = patch_comparison(a, task, tmp, old_dir) if a.old and a.patch_samples else {}
    print(f"model {a.model}, {a.samples} samples × {n_rows // a.samples} conditions, {a.labels} labels in the "
          f"space; machine GEMM {rate:.1f} GFLOP/s (fp32, 2 threads); shared machine: medians of {a.repeats}")
    print(f"model load alone: {load_s:.1f} s (in every run below)")
    print(f"{'run':16s} {'wall s':>8s} {'cpu s':>8s} {'wall @56':>9s} {'cpu @56':>8s} {'dry run s':>10s} {'est/meas':>9s}")
    for name, t in times.items():
        est = f"{t['dry_run']:10.1f} {t['dry_run'] / t['wall']:9.2f}" if "dry_run" in t else ""
        print(f"{name:16s} {t['wall']:8.1f} {t['cpu']:8.1f} {t['wall'] * rate / 56:9.1f} {t['cpu'] * rate / 56:8.1f} "
              f"{est}")
    ft, ans = times["first-token"], times["answer"]
    ratio = {k: ans[k] / ft[k] for k in ("wall", "cpu")}
    ratio_work = (ans["wall"] - load_s) / max(ft["wall"] - load_s, 1e-9)
    print(f"answer / first-token: wall {ratio['wall']:.2f}, cpu {ratio['cpu']:.2f} (target ≤ 3); "
          f"wall without the model load {ratio_work:.2f}")
    if a.old:
        old = times["answer (old)"]
        print(f"old answer / new answer: wall {old['wall'] / ans['wall']:.1f}×, cpu {old['cpu'] / ans['cpu']:.1f}×")
        print("new vs old: " + ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in diff.items()) + " (target: log-probs ≤ 1e-4, 0 rows)")
    if patch:
        print(f"patch --score answer, {a.patch_samples} samples, layers 15;20;25 (and singles) × first,last: "
              f"new {patch['new']['wall']:.1f} s wall / {patch['new']['cpu']:.1f} s cpu, old {patch['old']['wall']:.1f}"
              f" s wall / {patch['old']['cpu']:.1f} s cpu ({patch['old']['cpu'] / patch['new']['cpu']:.1f}× cpu); "
              + ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in patch["diff"].items()))
    print(json.dumps({"model": a.model, "patch": patch, "samples": a.samples, "labels": a.labels, "rows": n_rows,
                      "gemm_gflops": round(rate, 1), "load_s": round(load_s, 1),
                      "times": {k: {m: round(v, 1) for m, v in t.items()} for k, t in times.items()},
                      "ratio_answer_first_token": {k: round(v, 2) for k, v in ratio.items()},
                      "diff_vs_old": diff, "repeats": a.repeats}))


if __name__ == "__main__":
    main()
