"""``ivlens ARGS`` as a process of its own, without a Python start-up: forked by the fork server that the study's
worker pools use (:func:`ivlens.study.process_executor.worker_context`), which has imported torch, transformers and
the analyses once (:data:`~ivlens.study.process_executor.PRELOAD`).

For the tests that SIGKILL a run part-way and resume it: the killed run and its resumption must be processes (a
kill ends a process, whatever it was doing), but what they test is the run contract, not the interpreter's start,
which costs ``python -m ivlens`` about 6 s of CPU here (``python -X importtime -c "import ivlens.cli"``) and
``import ivlens.cli`` on top of the fork server's imports 0.07 s. A forked process runs :func:`ivlens.cli.main`
with the arguments in ``sys.argv``, as the console entry point does; the tests of that entry point itself (exit
code and stderr of ``python -m ivlens``) start real interpreters (``tests/test_run_contract.py``'s ``BAD_INPUT``).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def _main(args: list[str], environ: dict[str, str], cwd: str, log: str, threads: int) -> None:
    """The forked process: this environment, directory and torch thread count, stdout and stderr into ``log``,
    then ``ivlens ARGS`` (its ``sys.exit`` code is the process's exit code)."""
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    import torch

    torch.set_num_threads(threads)
    sys.argv = ["ivlens", *args]
    from ivlens.cli import main

    main()


class CliProcess:
    """``ivlens ARGS`` running in a forked process, with the part of :class:`subprocess.Popen`'s interface the
    SIGKILL tests use (``pid``, ``poll``, ``send_signal``, ``wait``, ``returncode``) and its output (:attr:`output`).
    ``threads``: torch threads (one, as ``OMP_NUM_THREADS=1`` gives a ``python -m ivlens`` process)."""

    def __init__(self, args: list[str], environ: dict[str, str], cwd: Path, log: Path, threads: int = 1):
        from ivlens.study.process_executor import worker_context

        self.log = Path(log)
        self._proc = worker_context().Process(target=_main, args=([str(a) for a in args], dict(environ), str(cwd),
                                                                  str(self.log), threads))
        self._proc.start()
        self.pid = self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once ended (``-N``: ended by signal ``N``), else ``None``."""
        return self._proc.exitcode

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int = signal.SIGKILL) -> None:
        if sig == signal.SIGKILL:
            self._proc.kill()  # multiprocessing's: not once the process has been reaped
        elif self._proc.exitcode is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int | None:
        self._proc.join(timeout)
        return self.returncode

    @property
    def output(self) -> str:
        """What the process wrote to stdout and stderr."""
        return self.log.read_text(errors="replace") if self.log.is_file() else ""
