"""What every report figure shares: the patch effects' names and the models' order. Each analysis's figures live
with its section (``ivlens.<analysis>.section``): plain tables in, PNG bytes out (matplotlib, Agg backend, through
:mod:`ivlens.plots`); every figure draws the models side by side with one colour each, labels every axis and colour
bar, and reads no file.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Human names of the patch effects (the ``effect`` column of a patch run's tables).
EFFECT_LABELS = {
    "delta_logit_vs_target": "Δ label logit vs query-only run",
    "delta_prob_vs_target": "Δ label probability vs query-only run",
    "delta_rr_vs_target": "Δ reciprocal rank vs query-only run",
    "delta_logit_diff_vs_target": "Δ logit(label) − logit(other label) vs query-only run",
}


def effect_label(effect: str) -> str:
    return EFFECT_LABELS.get(effect, effect)


def ordered(values) -> list:
    return list(dict.fromkeys(values))


def present(order: Sequence[str], values) -> list[str]:
    """``order`` restricted to the values present, then any value ``order`` lacks."""
    have = ordered(values)
    return [m for m in order if m in have] + [m for m in have if m not in order]


def layer_set(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in str(s).split(","))

