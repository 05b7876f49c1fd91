"""Process-wide settings changed for one block of code and restored after it.

Library code never leaves a global setting changed behind it: each context manager here records the value it
replaces and puts it back on exit, also when the block raises. This module is the one place where ivlens
changes torch's and BLAS's thread counts and quiets third-party libraries.

>>> with torch_threads(2), quiet_libraries():
...     model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf)   # no tqdm bars, 2 threads
"""

from __future__ import annotations

import functools
import importlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from threadpoolctl import threadpool_limits

#: third-party loggers that speak at INFO/WARNING about things an ivlens user cannot act on
NOISY_LOGGERS = ("transformers", "nnsight", "httpx", "datasets", "huggingface_hub", "accelerate")
#: modules that build a plain ``tqdm.auto.tqdm`` bar, ignoring transformers' progress-bar switch
_PLAIN_TQDM_MODULES = ("transformers.modeling_gguf_pytorch_utils",)  # "Converting and de-quantizing GGUF tensors"


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``; no change when ``n`` is ``None`` or 0."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Run the block with numpy's and scipy's BLAS and LAPACK (OpenBLAS) on ``n`` threads, then restore them (torch's
    own threads: :func:`torch_threads`). Also a decorator: ``@blas_threads(1)``."""
    with threadpool_limits(limits=n, user_api="blas"):
        yield


@contextmanager
def logger_levels(names: Sequence[str], level: int) -> Iterator[None]:
    """Raise the named loggers to at least ``level`` for the block, then restore their own levels."""
    loggers = [logging.getLogger(n) for n in names]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.getEffectiveLevel()))
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, before, strict=True):
            lg.setLevel(lvl)


@contextmanager
def _transformers_quiet() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights", "Loading checkpoint shards", "Writing model shards"
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@contextmanager
def _optional_bars_off(module: str, enabled: str, disable: str, enable: str) -> Iterator[None]:
    """Switch off the progress bars of an optional library (``datasets``, ``huggingface_hub``) if installed.

    ``enabled`` names the module's query function; a leading ``!`` negates it (huggingface_hub asks
    ``are_progress_bars_disabled``)."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        yield
        return
    was_on = bool(getattr(mod, enabled.lstrip("!"))()) != enabled.startswith("!")
    getattr(mod, disable)()
    try:
        yield
    finally:
        if was_on:
            getattr(mod, enable)()


@contextmanager
def _plain_tqdm_off() -> Iterator[None]:
    """Replace the ``tqdm`` name in modules that use a plain tqdm bar by one that is disabled."""
    patched = []
    for name in _PLAIN_TQDM_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        original = getattr(mod, "tqdm", None)
        if original is not None:
            mod.tqdm = functools.partial(original, disable=True)
            patched.append((mod, original))
    try:
        yield
    finally:
        for mod, original in patched:
            mod.tqdm = original


#: deprecation warnings raised inside third-party code about third-party names (nothing a user of ivlens can change)
DEPRECATIONS_OF_OTHERS = (r".*is_gradient_checkpointing.* is deprecated",)


def libraries_quiet() -> bool:
    """Whether this process is inside :func:`quiet_libraries` now (transformers' logger at ERROR or above): what a
    spawned worker copies so that it speaks as much as the process that started it."""
    return logging.getLogger("transformers").getEffectiveLevel() >= logging.ERROR


@contextmanager
def quiet_libraries(verbose: bool = False, extra_loggers: Sequence[str] = ()) -> Iterator[None]:
    """Silence third-party progress bars and chatter for the block, unless ``verbose``.

    Covers transformers (logging, its tqdm bars for weight loading and saving), the GGUF de-quantisation bar,
    ``datasets`` and ``huggingface_hub`` bars, and the loggers of :data:`NOISY_LOGGERS` plus ``extra_loggers``
    (raised to ERROR), and :data:`DEPRECATIONS_OF_OTHERS`. Everything is restored on exit.
    """
    if verbose:
        yield
        return
    with ExitStack() as stack:
        stack.enter_context(_transformers_quiet())
        stack.enter_context(_plain_tqdm_off())
        stack.enter_context(_optional_bars_off("datasets.utils.logging", "is_progress_bar_enabled",
                                               "disable_progress_bar", "enable_progress_bar"))
        stack.enter_context(_optional_bars_off("huggingface_hub.utils", "!are_progress_bars_disabled",
                                               "disable_progress_bars", "enable_progress_bars"))
        stack.enter_context(logger_levels([*NOISY_LOGGERS, *extra_loggers], logging.ERROR))
        stack.enter_context(warnings.catch_warnings())
        for message in DEPRECATIONS_OF_OTHERS:
            warnings.filterwarnings("ignore", message=message, category=FutureWarning)
        yield
