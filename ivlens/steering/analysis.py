"""From a steering table to dose-response curves and the comparison with patching (pure: tables in, tables out).

- :func:`dose_response`: per (model, vector, position, layer, α) the mean and s.e.m. over samples of
  ``ia_top1`` (the top-1 token is in the label space), ``acc_top1``, the label's logit and its change against the
  unsteered query-only run: patching's columns and its statistics
  (:func:`ivlens.patching.interactions.single_layer_effects` reports mean ± s.e.m. the same way).
- :func:`best_per_layer`: per (model, layer) the steering configuration (vector, position, α) of highest
  ``ia_top1``.
- :func:`compare_with_patching`: per (model, layer) the best steering ``ia_top1`` against the best patching
  ``ia_top1`` of the single layer and of the best layer set (pair or triplet) containing the layer, with a paired
  t-test and a Wilcoxon test (:func:`~ivlens.patching.interactions.paired_tests`), Holm- or BH-corrected over the
  layers of a model, as patching corrects over its sets. Every column of a row is computed on the same queries:
  those both runs share (``n``); a steering run of 10 queries against a patch run of 8 of them is compared on the 8,
  the choice of the best configuration included. A layer without a single-layer patch (its effect is 0 by
  construction) has no test: its p-values stay NaN, it is left out of the family the correction adjusts and has no
  verdict.

The best configuration is chosen on the same samples it is tested on, on both sides (steering chooses among
vectors × positions × α, patching among positions); the test therefore favours the side with more choices,
steering, and a "falls short" verdict is conservative.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ivlens.patching.interactions import correct, paired_tests
from ivlens.patching.reach import zero_by_construction
from ivlens.specs import Correction

log = logging.getLogger(__name__)

KEYS = ["model", "vector", "position", "layer", "alpha"]
METRICS = ("ia_top1", "acc_top1", "logit", "delta_logit_vs_target")


def dose_response(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and s.e.m. of :data:`METRICS` per (model, vector, position, layer, α), with ``n`` samples, and
    ``zero_by_construction``: no later computation reads the edit on any sample (:mod:`ivlens.patching.reach`)."""
    g = rows.groupby(KEYS, sort=False)
    agg = {"n": ("sample", "size")}
    for m in METRICS:
        agg[m] = (m, "mean")
        agg[f"{m}_sem"] = (m, "sem")
    out = g.agg(**agg)
    out["zero_by_construction"] = zero_by_construction(rows, KEYS)
    return out.reset_index()


def best_per_layer(dose: pd.DataFrame) -> pd.DataFrame:
    """The configuration of highest mean ``ia_top1`` per (model, layer) (ties: larger logit change, then smaller α),
    among those whose effect is not 0 by construction (an unread edit keeps the unsteered ``ia_top1``, which is no
    finding); a layer with no other configuration has no row."""
    if "zero_by_construction" in dose:
        dose = dose[~dose.zero_by_construction.astype(bool)]
    d = dose.sort_values(["model", "layer", "ia_top1", "delta_logit_vs_target", "alpha"],
                         ascending=[True, True, False, False, True])
    return d.groupby(["model", "layer"], sort=False).head(1).reset_index(drop=True)


def _best_patch(patch: pd.DataFrame, layer: int, sets: bool, layer_lists: pd.Series
                ) -> tuple[str, str, float, float] | None:
    """``(layers, position, mean ia_top1, mean acc_top1)`` of the best single-layer patch at ``layer`` by
    ``ia_top1`` (or, with ``sets``, the best pair or triplet containing it), or ``None`` when the table has none;
    patches whose effect is 0 by construction are not candidates. ``layer_lists``: each patch row's layers as
    strings (``"0,3"`` → ``["0", "3"]``), split once for every call."""
    sizes = patch.set_size > 1 if sets else patch.set_size == 1
    has = layer_lists.apply(lambda s: str(layer) in s)
    p = patch[sizes & has]
    if p.empty:
        return None
    unread = zero_by_construction(p, ["layers", "position"])
    m = p.groupby(["layers", "position"], sort=False)[["ia_top1", "acc_top1"]].mean()
    m = m[~unread.reindex(m.index).to_numpy()]
    if m.empty:
        return None
    m = m.sort_values("ia_top1", ascending=False, kind="stable")
    (layers, position), ia_top1, acc = m.index[0], float(m.ia_top1.iloc[0]), float(m.acc_top1.iloc[0])
    return layers, position, ia_top1, acc


def shared_samples(steer: pd.DataFrame, patch: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both tables restricted, model by model, to the samples both ran (the paired ones); a model that shares no
    sample with the patch table drops out (with a warning naming it)."""
    pairs = steer[["model", "sample"]].drop_duplicates().merge(patch[["model", "sample"]].drop_duplicates())
    lost = [m for m in dict.fromkeys(steer.model) if m not in set(pairs.model)]
    if lost:
        log.warning("steering vs patching: %s share%s no sample with the patch run; no comparison for %s",
                    ", ".join(map(str, lost)), "s" if len(lost) == 1 else "", "it" if len(lost) == 1 else "them")
    keep = pd.MultiIndex.from_frame(pairs)
    return (steer[pd.MultiIndex.from_frame(steer[["model", "sample"]]).isin(keep)],
            patch[pd.MultiIndex.from_frame(patch[["model", "sample"]]).isin(keep)])


def compare_with_patching(steer: pd.DataFrame, patch: pd.DataFrame, *, correction: Correction = "holm",
                          alpha: float = 0.05) -> pd.DataFrame:
    """Best steering ``ia_top1`` against best patching ``ia_top1`` per (model, layer), on the samples both tables
    share; see the module docstring.

    Args:
        steer: a steering table (rows of :func:`ivlens.steering.sweep.steer_sweep`).
        patch: a patch table of the same task, subtask, target and format (``ivlens patch`` rows).

    Returns:
        one row per (model, layer), every column computed on the ``n`` samples both tables share:
        ``steer_ia_top1`` and its configuration (``steer_vector``, ``steer_position``, ``steer_alpha``, chosen on
        those samples) with its accuracy ``steer_acc``, and ``steer_best_acc`` (the best accuracy of any
        configuration at the layer: ``ia_top1`` counts any answer in the label space, accuracy the instructed one);
        ``patch_ia_top1`` / ``patch_acc`` / ``patch_position`` (single layer), ``set_ia_top1`` / ``set_acc`` /
        ``set_layers`` / ``set_position`` (best set containing the layer), ``diff`` (steer − single-layer patch),
        ``p_t``, ``p_wilcoxon`` and the corrected ``p_t_adj``, and ``verdict``: ``falls short`` / ``exceeds``
        (significantly below / above the single-layer patch after correction) or ``no significant difference``;
        a layer without a single-layer patch, or where the test is undefined (fewer than 2 shared samples, or the
        same ``ia_top1`` on every one: :func:`~ivlens.patching.interactions.paired_tests`), has NaN p-values (left
        out of the correction) and no verdict.
    """
    steer, patch = shared_samples(steer, patch)
    n_shared = steer.groupby("model")["sample"].nunique()
    dose = dose_response(steer)
    best = best_per_layer(dose)
    best_acc = dose[~dose.zero_by_construction].groupby(["model", "layer"]).acc_top1.max()
    out = []
    layer_lists = patch.layers.astype(str).str.split(",")
    for r in best.itertuples():
        mine = (patch.model == r.model).to_numpy()
        pm, lists = patch[mine], layer_lists[mine]
        single = _best_patch(pm, r.layer, sets=False, layer_lists=lists)
        multi = _best_patch(pm, r.layer, sets=True, layer_lists=lists)
        rec = {"model": r.model, "layer": r.layer, "steer_ia_top1": r.ia_top1, "steer_acc": r.acc_top1,
               "steer_best_acc": float(best_acc[r.model, r.layer]), "steer_vector": r.vector,
               "steer_position": r.position, "steer_alpha": r.alpha,
               "patch_ia_top1": single[2] if single else np.nan, "patch_acc": single[3] if single else np.nan,
               "patch_position": single[1] if single else None,
               "set_ia_top1": multi[2] if multi else np.nan, "set_acc": multi[3] if multi else np.nan,
               "set_layers": multi[0] if multi else None, "set_position": multi[1] if multi else None,
               "n": int(n_shared[r.model]), "diff": np.nan, "p_t": np.nan, "p_wilcoxon": np.nan}
        if single:
            s = steer[(steer.model == r.model) & (steer.layer == r.layer) & (steer.vector == r.vector)
                      & (steer.position == r.position) & (steer.alpha == r.alpha)].groupby("sample").ia_top1.mean()
            p = pm[(pm.set_size == 1) & (pm.layers.astype(str) == str(r.layer))
                   & (pm.position == single[1])].groupby("sample").ia_top1.mean()
            shared = s.index.intersection(p.index)
            t = paired_tests(s[shared].to_numpy(float), p[shared].to_numpy(float))
            rec.update(n=len(shared), diff=t["mean_interaction"], p_t=t["p_t"], p_wilcoxon=t["p_wilcoxon"])
        out.append(rec)
    table = pd.DataFrame(out)
    if table.empty:
        return table
    table["p_t_adj"] = np.nan
    for _m, idx in table.groupby("model", sort=False).groups.items():
        table.loc[idx, "p_t_adj"] = correct(table.loc[idx, "p_t"].to_numpy(float), correction)
    sig = table.p_t_adj < alpha
    table["verdict"] = np.where(sig & (table["diff"] < 0), "falls short",
                                np.where(sig & (table["diff"] > 0), "exceeds", "no significant difference"))
    table["verdict"] = table.verdict.where(table.p_t_adj.notna(), None)
    return table
