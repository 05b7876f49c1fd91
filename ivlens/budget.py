"""Memory budgets: how many bytes of working memory an analysis may use beyond the model's weights.

Every long analysis (the patching engine today; probe collection and the tracer next) sizes its batches from
one number of bytes, given on the command line as ``--memory-budget`` (``4GB``, ``512MiB``, ``1.5G``,
``800000000``) or chosen automatically:

- on CUDA: half of the device's free memory (``torch.cuda.mem_get_info``), since the weights are already there;
  with ``auto`` (accelerate's ``device_map``), half of the least free memory among the visible GPUs;
- on CPU (and ``auto`` without a GPU): a quarter of the available
  RAM (``psutil``), at most :data:`CPU_DEFAULT_CAP`. Past a few hundred megabytes of activations, bigger
  batches do not make CPU matrix products faster, and other processes share the machine.

Units: ``B``; decimal ``KB MB GB TB`` (10³ⁿ); binary ``KiB MiB GiB TiB`` (2¹⁰ⁿ); a bare ``K M G T`` is binary.
Case does not matter.

>>> parse_bytes("512MiB")
536870912
>>> parse_bytes("4GB")
4000000000
"""

from __future__ import annotations

import re

import torch

from ivlens.errors import IvlensError

#: The smallest budget accepted: below this nothing useful fits one batch.
MIN_BUDGET = 16 << 20
#: The automatic CPU budget never exceeds this (see the module docstring).
CPU_DEFAULT_CAP = 1 << 30
#: Share of the available memory taken by the automatic budget, per device type.
DEFAULT_SHARE = {"cpu": 0.25, "cuda": 0.5}

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
FORMS = "a number of bytes with an optional unit: 800000000, 512MiB, 4GB, 1.5G (units B, KB/MB/GB/TB, KiB/MiB/GiB/TiB)"


class BudgetError(IvlensError, ValueError):
    """A memory budget that cannot be read or is too small; the message names ``--memory-budget`` and the forms."""


def parse_bytes(text: str | int | float) -> int:
    """Bytes in ``text`` (``"4GB"``, ``"512MiB"``, ``"1.5G"``, ``"800000000"``) or a number.

    Raises :class:`BudgetError` naming ``--memory-budget`` and the accepted forms.
    """
    if isinstance(text, bool):
        raise BudgetError(f"--memory-budget: cannot read {text!r}; give {FORMS}")
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
        if m is None or m.group(2).lower() not in _UNITS:
            raise BudgetError(f"--memory-budget: cannot read {text!r}; give {FORMS}")
        value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not value >= MIN_BUDGET:  # also catches NaN
        raise BudgetError(f"--memory-budget: {text!r} is below the minimum of {MIN_BUDGET >> 20} MiB; give {FORMS}")
    return int(value)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one), at least 1."""
    import os

    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def available_bytes(device: str | torch.device = "cpu") -> int:
    """Free memory where activations of ``device`` live: the CUDA device's free memory; for ``auto`` (a model spread
    over the visible GPUs) the least free memory among them, or the available RAM when there is no GPU."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return min(int(torch.cuda.mem_get_info(i)[0]) for i in range(torch.cuda.device_count()))
        device = "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def resolve_memory_budget(requested: str | int | float | None, device: str | torch.device = "cpu") -> int:
    """The working-memory budget in bytes: ``requested`` parsed (:func:`parse_bytes`), or the automatic default
    for ``device`` (``cpu``, ``cuda[:N]``, ``auto``; see the module docstring) when it is ``None`` or ``"auto"``.

    >>> resolve_memory_budget("2GiB", "cpu")
    2147483648
    """
    if requested is not None and str(requested).strip().lower() != "auto":
        return parse_bytes(requested)
    gpu = str(device).startswith("cuda") or (str(device) == "auto" and torch.cuda.is_available())
    kind = "cuda" if gpu else "cpu"
    budget = int(available_bytes(device) * DEFAULT_SHARE[kind])
    if kind == "cpu":
        budget = min(budget, CPU_DEFAULT_CAP)
    return max(MIN_BUDGET, budget)
