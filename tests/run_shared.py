"""Things built once per test run, also when pytest-xdist runs the tests in several worker processes.

A session fixture is made once per *process*; with ``-n 2`` each worker would build its own copy. For an
expensive build (the tiny organism, the real organism of the slow tier) the first worker to ask builds it into a
directory shared by the run's workers, holding a file lock, and the others wait for it and read the same
directory (the pytest-xdist docs' pattern: the lock lives under ``tmp_path_factory.getbasetemp().parent``, the
run's own temporary directory). Without xdist the build goes to a fresh ``tmp_path_factory`` directory as before.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

#: written into the shared directory once its build finished: the path the build returned
DONE = "built.json"


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Path]) -> Path:
    """``build(directory)`` made once per test run and shared by all its workers; returns what ``build`` returned
    (a path). ``directory`` is empty and named after ``name``. A build that raises is retried by the next worker
    that asks for it (nothing half-built is read)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent / name  # the run's directory, above each worker's own
    done = root / DONE
    with FileLock(f"{root}.lock"):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            done.with_suffix(".tmp").write_text(json.dumps(str(build(root))))
            done.with_suffix(".tmp").replace(done)
    return Path(json.loads(done.read_text()))
