"""``ivlens.plots.png_bytes``: each figure drawn once, with the same PNG bytes as matplotlib's own ``savefig`` (which
lays a figure with a layout engine out in a first draw with drawing switched off, then draws it again)."""

from __future__ import annotations

import io
import pickle

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ivlens.plots import DPI, png_bytes  # noqa: E402

pytestmark = pytest.mark.unit


def _constrained():
    fig, axes = plt.subplots(1, 2, figsize=(6, 3), layout="constrained")
    im = axes[0].imshow(np.arange(12.0).reshape(3, 4))
    fig.colorbar(im, ax=axes[0], label="a long colour bar label")
    axes[1].plot([0, 1, 2], [1, 3, 2], label="line")
    fig.legend(loc="outside right upper")  # room made by the layout engine
    fig.suptitle("constrained, colour bar and legend")
    return fig


def _tight():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(["a", "b", "c"], [3, 1, 2])
    ax.set_ylabel("a label that tight_layout makes room for")
    fig.tight_layout()  # leaves a placeholder layout engine on the figure
    return fig


def _plain():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.scatter([1, 2, 3], [3, 2, 1])
    return fig


@pytest.mark.parametrize("make", [_constrained, _tight, _plain])
def test_png_bytes_equal_savefig_and_draw_once(make, monkeypatch):
    fig = make()
    twin = pickle.loads(pickle.dumps(fig))  # the same figure, saved the usual way
    expected = io.BytesIO()
    twin.savefig(expected, format="png", dpi=DPI)
    plt.close(twin)

    draws = []
    draw = type(fig).draw
    monkeypatch.setattr(type(fig), "draw", lambda self, renderer: (draws.append(1), draw(self, renderer))[1])
    got = png_bytes(fig)
    assert got == expected.getvalue()
    assert len(draws) == 1  # savefig's own first draw (to lay the figure out) is not needed
    assert not plt.fignum_exists(fig.number)  # closed
