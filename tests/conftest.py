"""Shared fixtures (tiny random models of every supported architecture, built from config in milliseconds; one tiny
organism build and one run of the tiny study per test run, also across pytest-xdist workers), the tests' cost
markers, their order (costliest files first) and each xdist worker's torch threads.

Every test carries exactly one cost marker (registered in pyproject.toml), so that a developer runs the layer they
touch (docs/testing.md):

- ``unit``: no model (parsers, plans, statistics, tables, tokenizers);
- ``tiny``: tiny random models in memory, checked against plain-PyTorch references (the maths of every family);
- ``cli``: end to end: commands (in-process or as ``python -m ivlens`` processes), studies, Ray, the tiny organism
  build;
- ``slow``: real weights (SmolLM2), the real organism build, long end-to-end runs (SIGKILL and resume).

A test marked by hand keeps its marker; the others get one here: ``cli`` when they use the tiny organism build,
else their file's (:data:`FILE_COST`), else ``tiny``; a ``unit`` test that asks for a tiny-model fixture
(:data:`TINY_FIXTURES`) becomes ``tiny``. The fast tier is ``-m "unit or tiny"``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from run_shared import built_once  # noqa: E402

from ivlens.testing import ARCHS  # noqa: E402  (names only: pytest-xdist's controller imports no model code)

COST_MARKERS = ("unit", "tiny", "cli", "slow")
#: the cost of a file's tests that are not marked by hand, by file name (unique across tests/; files not named
#: here: ``tiny``)
FILE_COST = {
    **dict.fromkeys(("test_budget.py", "test_patching_interactions.py", "test_patching_plan.py", "test_probing.py",
                     "test_prompts.py", "test_study.py", "test_tasks.py", "test_tasks_errors.py",
                     "test_tasks_fuzz.py", "test_tracing_selectivity.py"), "unit"),
    **dict.fromkeys(("test_cli.py", "test_determinism.py", "test_error_battery.py", "test_families_cli.py",
                     "test_output.py", "test_patching_cli.py", "test_patching_resume.py", "test_probing_cli.py",
                     "test_tasks_cli_errors.py", "test_tracing_cli.py"), "cli"),
}
#: the fast tier's costliest files (``-m "unit or tiny"``, ``--durations=0`` summed per file, seconds on the loaded
#: 2-core machine with 2 workers, 2026-12-06), by file name: they run first, costliest first (a unit file can cost
#: more than most tiny ones: test_probing.py's reference fits); refresh when a file's cost moves, only the order counts
FAST_TIER_SECONDS = {
    "test_patching_engine.py": 81, "test_probing.py": 37, "test_scoring.py": 31, "test_steer_engine.py": 29,
    "test_patching_scale.py": 25, "test_eval.py": 19, "test_patching_linear.py": 16, "test_adapters.py": 16,
    "test_probing_collect.py": 13, "test_tasks_fuzz.py": 12, "test_logit_lens.py": 9, "test_load.py": 8,
    "test_remote.py": 8, "test_estimate.py": 7, "test_patching_analysis.py": 6, "test_readout_sources.py": 6,
    "test_tracing_graph.py": 6, "test_tracing_readout.py": 5, "test_tracing_surrogate.py": 4,
    "test_steer_run.py": 4, "test_run_contract.py": 4, "test_answer_scoring.py": 4, "test_readout.py": 3,
    "test_options.py": 2, "test_tracing_selectivity.py": 2, "test_layers.py": 2,
}
#: fixtures that make, save or load a tiny model
TINY_FIXTURES = {"arch", "tiny_dir", "two_tiny_dirs", "model_dir"}
#: fixtures that run analyses end to end: an organism build (tiny recipe); tests/report's study directory (organism,
#: eval, patch, probe and trace runs of three tiny models, about 15 s), which the page drawn from it (about 15 s)
#: requests too (``item.fixturenames`` holds the fixtures a test needs through others)
CLI_FIXTURES = {"tiny_organism", "study"}


def cost_of(item) -> str:
    """The cost marker of a collected test (see the module docstring)."""
    marked = [m for m in COST_MARKERS if item.get_closest_marker(m) is not None]
    if len(marked) > 1:
        raise pytest.UsageError(f"{item.nodeid} is marked {' and '.join(marked)}: give it one cost marker")
    if marked:
        return marked[0]
    fixtures = set(item.fixturenames)
    if fixtures & CLI_FIXTURES:
        return "cli"
    cost = FILE_COST.get(item.path.name, "tiny")
    return "tiny" if cost == "unit" and fixtures & TINY_FIXTURES else cost


def xdist_controller(config) -> bool:
    """Whether this process is pytest-xdist's controller, which starts the workers and runs no test: it imports no
    torch, transformers or ivlens model code (about 9 s of CPU here, before the workers could start)."""
    return bool(config.getoption("numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_configure(config):
    """Run the costliest files first (:class:`CostliestFilesFirst`). In a pytest-xdist worker, torch gets its share
    of the cores: ``max(1, threads // workers)`` threads, where ``threads`` is torch's own default (one per core),
    so that ``-n 2`` on 2 cores runs 2 threads, not 4; the processes a test starts (``python -m ivlens``, Ray's
    workers) get the same share through ``OMP_NUM_THREADS`` unless it is set already. Code that fixes its thread
    count (the organism build: 2 threads) still does."""
    if not xdist_controller(config):
        import datasets  # noqa: F401  (sets its logger's level on import: once here, not inside the first test using it)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if os.environ.get("PYTEST_XDIST_WORKER") and workers > 1:
        import torch

        share = max(1, torch.get_num_threads() // workers)
        torch.set_num_threads(share)
        os.environ.setdefault("OMP_NUM_THREADS", str(share))
    config.pluginmanager.register(CostliestFilesFirst(), "ivlens-costliest-files-first")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not any(item.get_closest_marker(m) for m in COST_MARKERS):
            item.add_marker(cost_of(item))
        else:
            cost_of(item)  # refuses two cost markers


class CostliestFilesFirst:
    """Orders the selected tests (after ``-m``/``-k`` deselected the others) by :func:`costliest_files_first`."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items):
        items[:] = costliest_files_first(items)


def costliest_files_first(items: list) -> list:
    """The tests, whole files at a time, the files with the costliest tests first (``slow`` before ``cli`` before
    the fast tier's; the fast tier's files by their measured cost (:data:`FAST_TIER_SECONDS`), then ``tiny``
    before ``unit``; among equals, more such tests first); a file's tests keep their order. With
    ``--dist loadfile --no-loadscope-reorder`` (scripts/test.sh) the workers take the long files first and end
    on the short ones, so that they finish together."""
    rank = {m: i for i, m in enumerate(COST_MARKERS)}  # unit 0 ... slow 3
    files: dict = {}
    for item in items:
        files.setdefault(item.path, []).append(rank[cost_of(item)])
    key = {path: (-max(max(r), rank["tiny"]), -FAST_TIER_SECONDS.get(path.name, 0), -max(r), -r.count(max(r)))
           for path, r in files.items()}
    return sorted(items, key=lambda item: key[item.path])  # stable: a file's tests stay in order, files together


#: loggers whose levels a test must leave as it found them
WATCHED_LOGGERS = ("", "transformers", "ivlens", "ivlens.tasks", "datasets", "nnsight", "huggingface_hub")
#: environment variables a test must leave as it found them (monkeypatch.setenv restores before the check)
WATCHED_ENV = ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "IVLENS_CACHE", "TQDM_DISABLE", "WANDB_DISABLED",
               "CUDA_VISIBLE_DEVICES", "TRANSFORMERS_VERBOSITY", "HF_DATASETS_OFFLINE", "OMP_NUM_THREADS",
               "PYTORCH_ENABLE_MPS_FALLBACK", "ACCELERATE_USE_CPU", "COLUMNS")


def global_state() -> dict:
    """Process-wide settings that library code could change and must restore."""
    import logging

    import torch
    from transformers.utils import logging as hf_logging

    return {
        "torch threads": torch.get_num_threads(),
        "grad mode": torch.is_grad_enabled(),
        "default dtype": torch.get_default_dtype(),
        "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
        "transformers verbosity": hf_logging.get_verbosity(),
        "transformers progress bars": hf_logging.is_progress_bar_enabled(),
        **{f"logger {name or 'root'} level": logging.getLogger(name).level for name in WATCHED_LOGGERS},
        "root logger handlers": tuple(logging.getLogger().handlers),
        **{f"env {k}": os.environ.get(k) for k in WATCHED_ENV},
    }


@pytest.fixture(autouse=True)
def leaves_global_state_unchanged(request):
    """Fail the test that changes a process-wide setting without restoring it (and restore it, so the next
    test starts clean)."""
    before = global_state()
    yield
    after = global_state()
    leaked = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    if leaked:
        _restore(before)
        pytest.fail(f"{request.node.nodeid} leaked global state: "
                    + "; ".join(f"{k}: {b!r} -> {a!r}" for k, (b, a) in leaked.items()), pytrace=False)


def _restore(state: dict) -> None:
    import logging

    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(state["torch threads"])
    torch.set_grad_enabled(state["grad mode"])
    torch.set_default_dtype(state["default dtype"])
    torch.use_deterministic_algorithms(state["deterministic algorithms"])
    hf_logging.set_verbosity(state["transformers verbosity"])
    (hf_logging.enable_progress_bar if state["transformers progress bars"] else hf_logging.disable_progress_bar)()
    for name in WATCHED_LOGGERS:
        logging.getLogger(name).setLevel(state[f"logger {name or 'root'} level"])
    logging.getLogger().handlers = list(state["root logger handlers"])
    for k in WATCHED_ENV:
        if state[f"env {k}"] is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = state[f"env {k}"]


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture
def tok():
    from ivlens.testing.tiny import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture
def tiny_dir(tmp_path_factory):
    """Factory: save a tiny model of ``arch`` with the tiny tokenizer to a directory and return its path."""

    from ivlens.testing.tiny import save_tiny_checkpoint

    def make(arch: str = "olmo2", **kw):
        return save_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny-{arch}"), arch, **kw)

    return make


@pytest.fixture(scope="session")
def two_tiny_dirs(tmp_path_factory) -> tuple[str, str]:
    """Two tiny OLMo-2 checkpoints (seeds 0 and 1, 4 layers, d_model 64) saved with the tiny tokenizer: the
    models of the study and shard tests."""
    from ivlens.testing.tiny import save_tiny_checkpoint

    a, b = (str(save_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny-olmo2-seed{seed}"), "olmo2", seed=seed,
                                     n_layers=4, d_model=64, n_heads=4)) for seed in (0, 1))
    return a, b


def tiny_study(dirs: tuple[str, ...] | list[str], name: str = "tiny") -> dict:
    """Every analysis on two tiny models, small enough for the default suite (patch in 1-sample shards): the study
    of ``tests/study/``."""
    return {
        "name": name,
        "models": {"base": dirs[0], "sft": {"model": dirs[1]}},
        "tasks": ["adjectives", "animals"],
        "analyses": {
            "eval": {"tasks": ["adjectives"], "samples": 3, "split": ["all"]},
            "patch": {"tasks": ["adjectives"], "subtask": "adj_ant", "layers": "pairs", "samples": 6,
                      "chunk_size": 1, "threads": 1, "figures": False},
            "probe": {"layers": "0,-1", "max_per_subtask": 12, "folds": 2, "batch_size": 4},
            "trace": {"tasks": ["animals"], "compare": True, "samples": 2, "top_k": 5, "beam": 8},
        },
    }


def run_tiny_study(root: Path, models: tuple[str, str]) -> Path:
    """Into ``root``: copies of the two tiny checkpoints ``models`` (:func:`two_tiny_dirs`), their tiny study
    (:func:`tiny_study`, ``tiny.yaml``) and its uninterrupted run (``full/``): one step after another in this
    process, on one torch thread (as under ``OMP_NUM_THREADS=1``, and as each worker of ``--jobs 2``), report
    included. Returns ``root``."""
    import shutil

    import torch
    import yaml

    from ivlens.study import load_study, run_study

    dirs = [str(shutil.copytree(m, root / Path(m).name)) for m in models]
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny_study(dirs)))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_study(load_study(root / "tiny.yaml"), root / "full")
    finally:
        torch.set_num_threads(before)
    return root


@pytest.fixture(scope="session")
def tiny_study_run(tmp_path_factory, two_tiny_dirs) -> Path:
    """The tiny study run once per test run and shared by the test processes (:func:`run_tiny_study`; every
    process's ``two_tiny_dirs`` hold the same bytes): the reference that steps side by side, and a killed and
    resumed study, must equal. ``<dir>/tiny.yaml`` (the study), ``<dir>/full`` (its run). Read it; run the study
    elsewhere."""
    return built_once(tmp_path_factory, "tiny-study", functools.partial(run_tiny_study, models=two_tiny_dirs))


@pytest.fixture(scope="session")
def tiny_organism(tmp_path_factory):
    """One measured tiny-recipe organism build (gist variant, seed 1: ``<tmp>/gist/{base,sft,dpo}``, its card and
    completion marker), made once per test run and shared by every test that needs a built organism. Read it;
    copy it (``shutil.copytree``) before building next to it or changing it. The plumbing is tested on the tiny
    recipe; the real recipe is built once, in ``tests/organism/test_organism_build_slow.py`` (``-m slow``)."""
    from ivlens.organism.build import build_organism

    return built_once(tmp_path_factory, "tiny-organism",
                      lambda root: build_organism(out=root / "gist", seed=1, size="tiny", progress=False))

