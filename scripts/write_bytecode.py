"""Write the bytecode (.pyc) of the modules ivlens' processes import, by importing them once with writing on.

``scripts/setup_env.sh`` runs this where ``PYTHONDONTWRITEBYTECODE`` is set (this one process turns writing back
on: ``sys.dont_write_bytecode = False``). There Python never writes a ``.pyc``, so without it every process would
compile torch, transformers and the rest from source again (an import of ``ivlens.api``: about 26 s instead of 10).
Compiling at install instead (``uv pip install --compile-bytecode``) compiles every file of every package, about
15,000, of which ivlens' processes import about 4,500 (not transformers' hundreds of model families, nor the
packages' own tests). A module left out here still works: each process that imports it compiles it again.

    python scripts/write_bytecode.py run   # what the main job imports (study, build, analyses, report)
    python scripts/write_bytecode.py dev   # and what the test-suite imports (pytest, Ray, nnsight, ...)
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import time

#: the main job on top of every module of ivlens itself: the organism build (TRL, datasets), the probes
#: (scikit-learn), the statistical tests (scipy), the figures (matplotlib, PIL) and the tables (pandas, pyarrow)
RUN = ["matplotlib.pyplot", "matplotlib.backends.backend_agg", "PIL.Image", "sklearn.decomposition",
       "sklearn.model_selection", "sklearn.discriminant_analysis", "scipy.stats", "datasets", "trl",
       "pandas.core.reshape.reshape", "pandas.core.arrays.arrow.extension_types"]
#: the test-suite's own imports on top (the dev extra, and what the tests import at their top)
DEV = ["pytest", "xdist", "xdist.looponfail", "execnet", "hypothesis", "_hypothesis_pytestplugin",
       "anyio.pytest_plugin", "typer.testing", "ray", "gguf", "nnsight", "importlinter.cli", "yaml", "psutil",
       "websocket", "filelock"]


def main(level: str) -> int:
    if level not in ("run", "dev"):
        print(f"error: scripts/write_bytecode.py: unknown level {level!r}; give run or dev", file=sys.stderr)
        return 2
    sys.dont_write_bytecode = False
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    start = time.perf_counter()
    import ivlens

    def unwritten(name: str, e: BaseException | None = None) -> None:
        print(f"[ivlens] bytecode: {name} not importable ({e or 'walking its package failed'}); it will be compiled "
              "when first used", file=sys.stderr)

    own = [m.name for m in pkgutil.walk_packages(ivlens.__path__, "ivlens.", onerror=unwritten)
           if not m.name.endswith("__main__")]
    names = own + RUN
    if level == "dev":
        from _pytest.config import default_plugins  # pytest's own plugins, which it imports at start-up

        names += DEV + [f"_pytest.{p}" for p in default_plugins]
    for name in names:
        try:
            module = importlib.import_module(name)
            if name == "trl":  # TRL's trainers are lazy attributes: touching them imports their modules
                module.SFTTrainer, module.DPOTrainer  # noqa: B018
            if name == "PIL.Image":  # the image formats' plugins, which PIL imports on first use
                module.init()
        except Exception as e:  # an optional package missing here, or a module failing: the set-up still succeeds
            unwritten(name, e)
    print(f"[ivlens] bytecode of {len(sys.modules):,} modules written in {time.perf_counter() - start:.0f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "dev"))
