"""Matplotlib, set up once for every figure ivlens draws (run figures and the report's).

The one place that chooses matplotlib's backend: ``Agg``, files and bytes only, no window, so figures draw the same
on a laptop, a headless server and a Ray worker. Every figure module imports ``plt`` from here.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["DPI", "colours", "plt", "png_bytes"]

#: resolution of the PNGs the report embeds
DPI = 110


def colours(models: Sequence[str]) -> dict[str, str]:
    """One fixed colour per model, in the study's model order."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {m: cycle[i % len(cycle)] for i, m in enumerate(models)}


def png_bytes(fig) -> bytes:
    """``fig`` as PNG bytes (at :data:`DPI`, tight box); closes the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
