"""The report's organism section (the build cards) and its figure, drawn from finished ``organism`` runs."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ivlens.organism.card import current_card
from ivlens.page import html as h
from ivlens.page.context import Context, runs_section
from ivlens.page.figures import ordered, present
from ivlens.page.reader import Run
from ivlens.plots import plt, png_bytes


# ----------------------------------------------------------------------------- figures
def organism_transfer(iv: pd.DataFrame, models: Sequence[str], metric: str = "exact") -> bytes:
    """The organism card's single-layer IV transfer: share of queries answered right (``exact``) after patching the
    IV at one layer; rows: subtasks, columns: stages, one line per target/position."""
    subs = ordered(zip(iv.task, iv.subtask, strict=True))
    stages = present(models, iv.stage)
    keys = ordered(iv.target + "/" + iv.position)
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(len(subs), len(stages), figsize=(3.4 * len(stages), 2.4 * len(subs)), squeeze=False,
                             sharey=True, layout="constrained")
    for i, (task, sub) in enumerate(subs):
        for j, st in enumerate(stages):
            ax = axes[i][j]
            g = iv[(iv.task == task) & (iv.subtask == sub) & (iv.stage == st)]
            for k, key in enumerate(keys):
                h = g[(g.target + "/" + g.position) == key].sort_values("layer")
                ax.plot(h.layer, h[metric], "-o", ms=2.5, color=cmap(k % 10), label=key)
            ax.set_ylim(0, 1.03)
            ax.set_title(f"{st} · {sub}", fontsize=9)
            ax.set_xlabel("patched layer")
            ax.xaxis.get_major_locator().set_params(integer=True)
            if j == 0:
                ax.set_ylabel("accuracy patched" if metric == "exact" else metric)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=min(6, len(keys)), fontsize=8,
               title="target / position")
    return png_bytes(fig)



# ----------------------------------------------------------------------------- section
@runs_section("organism", having=lambda run: run.json("card") is not None, id="organism",
              title="The model organisms")
def organism_section(ctx: Context, runs: list[Run], s: h.Section) -> h.Section:
    """The model organisms."""
    for run in runs:
        card = current_card(run.json("card"))
        model = card.get("model", {})
        s.add(h.heading(f"{card.get('variant', '?')} organism ({model.get('architecture', '?')}, "
                        f"size {card.get('size', '?')}, seed {card.get('seed', '?')})"),
              h.para(card.get("made_how", "")),
              h.definition_list([(k, str(v)) for k, v in (card.get("recipe") or {}).items()]),
              h.definition_list([("model", ", ".join(f"{k} {v}" for k, v in model.items())),
                                 ("data", ", ".join(f"{k} {v}" for k, v in (card.get("data") or {}).items())),
                                 ("build time", ", ".join(f"{k} {v:.0f} s" for k, v in
                                                          (card.get("timing") or {}).items()
                                                          if isinstance(v, int | float)))]))
        stages = pd.DataFrame([{"stage": st, "steps": v.get("steps"), "loss first": v.get("loss_first"),
                                "loss last": v.get("loss_last"), "seconds": v.get("seconds"),
                                "weights sha256": v.get("weights_sha256")}
                               for st, v in (card.get("stages") or {}).items()])
        if not stages.empty:
            s.add(h.table(stages, "Training stages: pretraining (base), SFT, DPO.", ctx.data(run, "card.json")))
        acc = card.get("acceptance") or {}
        checks = pd.DataFrame([{"check": k, "value": v["value"] if not isinstance(v.get("value"), dict)
                                else ", ".join(f"{a}={b}" for a, b in v["value"].items() if a != "pass"),
                                "threshold": v.get("threshold"), "pass": v.get("pass")}
                               for k, v in acc.items() if isinstance(v, dict)])
        if not checks.empty:
            verdict = "every check passes" if acc.get("all_pass") else "some checks fail"
            s.add(h.table(checks, f"The organism issue's acceptance checks ({verdict}).", ctx.data(run, "card.json")))
        if run.has("iv_transfer"):
            iv = run.table("iv_transfer")
            if not iv.empty:
                s.add(h.figure(organism_transfer(iv, ctx.models),
                               "Single-layer IV transfer measured when the organism was built: the share of "
                               "queries answered right after patching the instruction's IV into the query-only "
                               "prompt at one layer, per stage (columns) and subtask (rows), one line per "
                               "query-only target (bare / formatted) and patched position.",
                               ctx.data(run, "iv_transfer")))
    return s



organism_section.omitted = ("the organism card", "organism")  # the page's note when no run draws it
