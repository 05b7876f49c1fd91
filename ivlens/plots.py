"""Matplotlib, set up once for every figure ivlens draws (run figures and the report's).

The one place that chooses matplotlib's backend: ``Agg``, files and bytes only, no window, so figures draw the same
on a laptop, a headless server and a Ray worker. Every figure module imports ``plt`` from here.

``plt`` is ``matplotlib.pyplot``, imported on its first use: a command that draws nothing (``ivlens --help``, a
step that writes only tables, a study's coordinating process) does not pay for matplotlib's import (about 0.5 s on
a 2-core machine, in every process).
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Sequence
from types import ModuleType

__all__ = ["DPI", "colours", "plt", "png_bytes"]


class _Pyplot:
    """``matplotlib.pyplot`` on the ``Agg`` backend, imported when an attribute is first read."""

    _module: ModuleType | None = None

    def __getattr__(self, name: str):
        if _Pyplot._module is None:
            import matplotlib

            matplotlib.use("Agg")
            _Pyplot._module = importlib.import_module("matplotlib.pyplot")
        return getattr(_Pyplot._module, name)


#: ``matplotlib.pyplot`` (Agg), imported on first use
plt = _Pyplot()

#: the report's resolution: figures are embedded at their natural size, and at 100 dpi the smallest text (7 pt tick
#: labels) is still about 10 px high
DPI = 100


def colours(models: Sequence[str]) -> dict[str, str]:
    """One fixed colour per model, in the study's model order."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {m: cycle[i % len(cycle)] for i, m in enumerate(models)}


def png_bytes(fig) -> bytes:
    """``fig`` as PNG bytes at :data:`DPI`, drawn once; closes the figure. Each figure is laid out where it is drawn
    (``tight_layout``, or a constrained layout engine where a legend or colour bar sits outside the axes), so there
    is no ``bbox_inches="tight"``: that draws the whole figure twice and measures every artist in between, most of
    a report's time. Nor does ``savefig`` lay it out: with a layout engine set (``tight_layout`` leaves a placeholder
    one) it draws the whole figure once with drawing switched off to lay it out, then again. Here the engine lays
    the figure out at :data:`DPI` and is removed, so the figure is drawn once: the same PNG bytes (all 35 figures of
    the main job's report compared), a fifth less time."""
    engine = fig.get_layout_engine()
    if engine is not None:
        fig.set_dpi(DPI)
        engine.execute(fig)  # a placeholder engine (left by tight_layout) does nothing
        fig.set_layout_engine(None)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()
