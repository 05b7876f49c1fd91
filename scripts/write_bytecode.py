"""Write the bytecode (.pyc) of the modules ivlens' processes import, by importing them once with writing on.

``scripts/setup_env.sh`` runs this where ``PYTHONDONTWRITEBYTECODE`` is set (this one process turns writing back
on: ``sys.dont_write_bytecode = False``). There Python never writes a ``.pyc``, so without it every process would
compile torch, transformers and the rest from source again (an import of ``ivlens.api``: about 26 s instead of 10).
Compiling at install instead (``uv pip install --compile-bytecode``) compiles every file of every package, about
15,000, of which ivlens' processes import about 4,500 (not transformers' hundreds of model families, nor the
packages' own tests). A module left out here still works: each process that imports it compiles it again.

On two or more cores two processes import side by side, one ivlens' own modules (which pull in torch and
transformers), the other the libraries of :data:`RUN` (and :data:`DEV`): 19 s instead of 28 for ``run`` here. They
compile some modules both (torch, each for its own imports); Python writes each ``.pyc`` to a temporary file and
renames it, so two writers of one file leave one whole file.

    python scripts/write_bytecode.py run   # what the main job imports (study, build, analyses, report)
    python scripts/write_bytecode.py dev   # and what the test-suite imports (pytest, Ray, nnsight, ...)
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

#: the main job on top of every module of ivlens itself: the organism build (TRL, datasets), the probes
#: (scikit-learn), the statistical tests (scipy), the figures (matplotlib, PIL) and the tables (pandas, pyarrow)
RUN = ["matplotlib.pyplot", "matplotlib.backends.backend_agg", "PIL.Image", "sklearn.decomposition",
       "sklearn.model_selection", "sklearn.discriminant_analysis", "scipy.stats", "datasets", "trl",
       "pandas.core.reshape.reshape", "pandas.core.arrays.arrow.extension_types"]
#: the test-suite's own imports on top (the dev extra, and what the tests import at their top)
DEV = ["pytest", "xdist", "xdist.looponfail", "execnet", "hypothesis", "_hypothesis_pytestplugin",
       "anyio.pytest_plugin", "typer.testing", "ray", "gguf", "nnsight", "importlinter.cli", "yaml", "psutil",
       "websocket", "filelock"]


def import_all(names: list[str]) -> int:
    """Import ``names`` with bytecode writing on (a failing one is named and skipped); the modules now loaded."""
    sys.dont_write_bytecode = False
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in names:
        try:
            module = importlib.import_module(name)
            if name == "trl":  # TRL's trainers are lazy attributes: touching them imports their modules
                module.SFTTrainer, module.DPOTrainer  # noqa: B018
            if name == "PIL.Image":  # the image formats' plugins, which PIL imports on first use
                module.init()
        except Exception as e:  # an optional package missing here, or a module failing: the set-up still succeeds
            _unwritten(name, e)
    return len(sys.modules)


def _unwritten(name: str, e: BaseException) -> None:
    print(f"[ivlens] bytecode: {name} not importable ({e}); it will be compiled when first used", file=sys.stderr)


def groups(level: str) -> list[list[str]]:
    """The modules to import, in two groups that import side by side: ivlens' own modules (every one but
    ``__main__``), and the libraries of :data:`RUN` (and, at the ``dev`` level, :data:`DEV` and pytest's plugins)."""
    root = Path(importlib.util.find_spec("ivlens").origin).parent  # found, not imported: the children import
    own = [".".join(("ivlens", *f.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
           for f in sorted(root.rglob("*.py")) if f.stem != "__main__"]
    libraries = list(RUN)
    if level == "dev":
        from _pytest.config import default_plugins  # pytest's own plugins, which it imports at start-up

        libraries += DEV + [f"_pytest.{p}" for p in default_plugins]
    return [own, libraries]


def _last_count(stdout: str) -> int:
    """The module count a child printed last (0 where it printed none: it failed, and said why on stderr)."""
    last = stdout.strip().splitlines()[-1:] or ["0"]
    return int(last[0]) if last[0].isdigit() else 0


def main(level: str) -> int:
    if level not in ("run", "dev"):
        print(f"error: scripts/write_bytecode.py: unknown level {level!r}; give run or dev", file=sys.stderr)
        return 2
    start = time.perf_counter()
    parts = groups(level)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cores < 2:
        counts = [import_all([name for part in parts for name in part])]
    else:
        children = [subprocess.Popen([sys.executable, __file__, "--import", *part], stdout=subprocess.PIPE, text=True)
                    for part in parts]
        counts = [_last_count(c.communicate()[0]) for c in children]
    print(f"[ivlens] bytecode of the modules imported by {len(counts)} process{'es' if len(counts) > 1 else ''} "
          f"({' + '.join(f'{n:,}' for n in counts)}, shared ones counted in each) written in "
          f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--import"]:  # one group, in a child process of main(): print how many modules it loaded
        print(import_all(sys.argv[2:]))
        sys.exit(0)
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "dev"))
