"""The root of ivlens's own error types: bad input that the CLI reports in one line (exit code 2).

Every ivlens error (``TaskError``, ``ModelLoadError``, ``PlanError``, ``BudgetError``, ``SpecError``, …) also
derives from this class, so one boundary (:func:`ivlens.cli.common.friendly_errors`) catches them all; a
traceback is shown only with ``--verbose``.
"""

from __future__ import annotations


class IvlensError(Exception):
    """Input ivlens cannot use: the message names the option or file, the value and the fix."""
