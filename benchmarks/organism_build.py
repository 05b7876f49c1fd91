"""Benchmark the model-organism build (not a timed test): the whole ``ivlens organism build`` on 2 threads.

Runs the build in a child process, as ``ivlens organism build`` runs it, into a temporary directory, then prints
one JSON line: ``{"variant", "size", "seed", "seconds_total", "seconds_train", "seconds": {stage: s}, "parameters",
"load_average_1m", "acceptance_all_pass"}``. The load average says how much else the machine was running.

    python benchmarks/organism_build.py [--variant gist] [--size small] [--seed 0] [--no-measure] [--keep DIR]
                                        [--omp-passive]

``--omp-passive`` sets ``OMP_WAIT_POLICY=PASSIVE`` before torch starts: on a 2-core machine shared with another
torch job, busy-waiting OpenMP threads made steps 3–7× slower; on an idle machine passive waiting costs time
(seed 0: 371 s with it against 298 s without, one run each).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import sys, torch
from pathlib import Path
from ivlens.organism.build import build_organism
build_organism(out=Path(sys.argv[1]), seed=int(sys.argv[2]), size=sys.argv[3], variant=sys.argv[4],
               force=True, measure=sys.argv[5] == "1", progress=False, reuse_base=False)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="gist")
    ap.add_argument("--size", default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-measure", action="store_true")
    ap.add_argument("--keep", type=Path, default=None, help="build here and keep it (default: a temp dir)")
    ap.add_argument("--omp-passive", action="store_true", help="OMP_WAIT_POLICY=PASSIVE (for a shared machine)")
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.omp_passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp) / args.variant
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", CHILD, str(out), str(args.seed), args.size, args.variant,
                        "0" if args.no_measure else "1"], env=env, check=True)
        wall = time.perf_counter() - t0
        card = json.loads((out / "card.json").read_text())
    timing = card["timing"]
    print(json.dumps({
        "variant": args.variant, "size": args.size, "seed": args.seed, "seconds_total": round(wall, 1),
        "seconds_train": round(timing["train_total"], 1),
        "seconds": {k: round(v, 1) for k, v in timing.items()},
        "parameters": card["model"]["parameters"], "load_average_1m": round(os.getloadavg()[0], 2),
        "acceptance_all_pass": card.get("acceptance", {}).get("all_pass"),
    }))


if __name__ == "__main__":
    main()
