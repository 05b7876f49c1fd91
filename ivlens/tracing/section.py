"""The report's tracing sections (circuit selectors; IV construction) and their figures, drawn from finished
``trace`` runs."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ivlens.page import html as h
from ivlens.page.context import Context, n_layers_of, runs_section
from ivlens.page.figures import ordered, present
from ivlens.page.reader import Run
from ivlens.plots import colours, plt, png_bytes

from .figures import draw_paths, draw_selectivity
from .selectivity import verdict_sentences


# ----------------------------------------------------------------------------- figures
def overlap_curves(curves: dict[str, dict[str, Sequence[float]]], models: Sequence[str]) -> bytes:
    """Weighted Jaccard of the two subtasks' path graphs by layer (solid) against two rephrasings of one
    instruction (dashed, the baseline); one panel per model. ``curves``: ``{model: {"ab": [...], "baseline": [...]}}``."""
    models = present(models, curves)
    col = colours(models)
    fig, axes = plt.subplots(1, len(models), figsize=(3.8 * len(models), 3.2), squeeze=False, sharey=True)
    for ax, m in zip(axes[0], models, strict=True):
        ab, base = curves[m].get("ab") or [], curves[m].get("baseline") or []
        if len(ab):
            ax.plot(range(len(ab)), ab, "-o", ms=3, color=col[m], label="instruction A vs B")
        if len(base):
            ax.plot(range(len(base)), base, "--", color="grey", label="two rephrasings of A")
        ax.set_ylim(0, 1.03)
        ax.set_xlabel("layer")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(m, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("weighted Jaccard of edge mass")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


def selectivity(table: pd.DataFrame, models: Sequence[str]) -> bytes:
    """The selectivity table of a ``trace --compare`` run (:func:`ivlens.tracing.draw_selectivity`): the
    gap ± CI by layer against the permutation null and the base model's gap, and the difference in differences."""
    models = present(models, table.model)
    with_did = bool(table.is_base.any()) and len(models) > 1
    fig = plt.figure(figsize=(3.6 * len(models), 5.6 if with_did else 3.2), layout="constrained")
    draw_selectivity(fig, table, models, colours(models))
    return png_bytes(fig)


def sample_paths(rows: pd.DataFrame, models: Sequence[str], top: int = 10) -> bytes:
    """The top ``top`` exact paths of one sample, drawn over the token × layer grid; rows: the two subtasks'
    instructions, columns: models. Red paths raise the answer's logit, blue ones lower it; width by |value|."""
    from ivlens.tracing.paths import Hop, Path

    subtasks = ordered(rows.subtask)
    models = present(models, rows.model)
    n_tok = max(len(json.loads(t)) for t in rows.tokens)
    n_layers = int(rows.n_layers.max())
    fig, axes = plt.subplots(len(subtasks), len(models), squeeze=False,
                             figsize=(max(3.6, 1.6 + 0.42 * n_layers) * len(models), (1.0 + 0.24 * n_tok) * len(subtasks)))
    for i, sub in enumerate(subtasks):
        for j, m in enumerate(models):
            g = rows[(rows.subtask == sub) & (rows.model == m)].sort_values("rank").head(top)
            ax = axes[i][j]
            if g.empty:
                ax.set_axis_off()
                continue
            paths = [Path(r.source, int(r.layer), int(r.pos), tuple(Hop(**h) for h in json.loads(r.hops)),
                          float(r.value)) for r in g.itertuples()]
            tokens = [t.replace("Ġ", "·").replace("Ċ", "⏎") for t in json.loads(g.tokens.iloc[0])]
            draw_paths(ax, paths, tokens, n_layers)
            t_inst = g.t_inst.iloc[0]
            if pd.notna(t_inst):
                ax.axhline(float(t_inst), color="tab:green", lw=1.4, alpha=0.9, ls=":")
                ax.get_yticklabels()[int(t_inst)].set_color("tab:green")
            query = g["query"].iloc[0] if "query" in g else ""
            ax.set_title(f"{m} · {sub}" + (f" (query {query!r})" if query else ""), fontsize=9)
            if j:
                ax.set_ylabel("")
    fig.tight_layout()
    return png_bytes(fig)


def _component_label(component: str, head: int) -> str:
    return f"H{head}" if component == "head" else {"mlp": "MLP", "attn_bias": "attn bias", "mlp_bias": "MLP bias",
                                                   "embed": "embed", "pos_embed": "pos embed"}.get(component, component)


def construction_grid(comp: pd.DataFrame) -> pd.DataFrame:
    """One model's read-out components summed over positions: ``layer`` (rows, ``-1`` the embeddings) ×
    component label (columns: heads, MLP, biases), values the signed contribution."""
    c = comp.assign(label=[_component_label(k, h) for k, h in zip(comp["component"], comp["head"], strict=True)])
    grid = c.pivot_table(index="layer", columns="label", values="value", aggfunc="sum", fill_value=0.0)
    heads = sorted((x for x in grid.columns if x.startswith("H")), key=lambda x: int(x[1:]))
    rest = [x for x in ("MLP", "attn bias", "MLP bias", "embed", "pos embed") if x in grid.columns]
    return grid[heads + rest]


def readout_value(comp: pd.DataFrame) -> float:
    """The traced value ``y`` of one model's component rows: its sources (embeddings and biases) sum to it."""
    return float(comp[comp.component.isin(["embed", "pos_embed", "attn_bias", "mlp_bias"])].value.sum())


def construction_heatmaps(comp: pd.DataFrame, models: Sequence[str]) -> bytes:
    """Per model (columns), the signed contribution of every head, MLP, bias and the embeddings (x) of each layer
    (y) to the traced read-out, in units of that model's ``|y|`` (probes of different models differ in scale);
    one symmetric colour scale for all panels."""
    order = present(models, comp.model)
    grids = {}
    for m in order:
        part = comp[comp.model == m]
        grids[m] = construction_grid(part) / (abs(readout_value(part)) or 1.0)
    vmax = max(float(np.abs(g.to_numpy()).max()) for g in grids.values()) or 1.0
    fig, axes = plt.subplots(1, len(order), figsize=(3.6 * len(order) + 1, 3.2), squeeze=False, sharey=True,
                             layout="constrained")
    im = None
    for ax, m in zip(axes[0], order, strict=True):
        g = grids[m]
        im = ax.imshow(g.to_numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(g.columns)), g.columns, rotation=60, fontsize=7)
        ax.set_yticks(range(len(g.index)), ["emb" if i < 0 else str(i) for i in g.index], fontsize=7)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("component")
    axes[0][0].set_ylabel("layer")
    fig.colorbar(im, ax=axes[0].tolist(), label="contribution / |w · resid_l[t]|")
    return png_bytes(fig)


def construction_tokens(comp: pd.DataFrame, models: Sequence[str]) -> bytes:
    """Per source token (y), the total of every path that starts at it (its embedding's edge, with the learned
    position embedding where there is one); one bar per model. With the bias terms they sum to the value."""
    rows = comp[comp.component.isin(["embed", "pos_embed"])]
    scale = {m: abs(readout_value(comp[comp.model == m])) or 1.0 for m in dict.fromkeys(comp.model)}
    tot = rows.groupby(["model", "src", "token"], as_index=False).value.sum()
    tot["value"] = tot.value / tot.model.map(scale)
    order = present(models, tot.model)
    srcs = sorted(tot.src.unique())
    labels = [f"{s}: {tot[tot.src == s].token.iloc[0]}" for s in srcs]
    col = colours(models)
    fig, ax = plt.subplots(figsize=(6, 0.28 * len(srcs) * max(1, len(order)) / 2 + 1.5), layout="constrained")
    width = 0.8 / max(1, len(order))
    for i, m in enumerate(order):
        v = tot[tot.model == m].set_index("src").value.reindex(srcs, fill_value=0.0)
        ax.barh(np.arange(len(srcs)) + i * width, v.to_numpy(), height=width, color=col[m], label=m)
    ax.set_yticks(np.arange(len(srcs)) + width * (len(order) - 1) / 2, labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.5)
    ax.set_xlabel("all paths from this token / |w · resid_l[t]|")
    ax.legend(fontsize=7)
    return png_bytes(fig)



# ----------------------------------------------------------------------------- section
def _compared(run: Run) -> bool:
    """A ``trace --compare`` run: its selectivity and overlaps, in the tracing section."""
    return run.json("compare") is not None


def _single_trace(run: Run) -> bool:
    """A trace run of one prompt (no ``--compare``, no read-out): its top paths, in the tracing section."""
    return not _compared(run) and bool(run.names(".paths.json")) and not run.has("readout_components")


@runs_section("trace", having=lambda run: _compared(run) or _single_trace(run), id="tracing",
              title="Circuit selectors (exact path tracing)")
def tracing_section(ctx: Context, drawn: list[Run], s: h.Section) -> h.Section:
    """Circuit selectors.

    With norms, attention patterns and MLP gates frozen at their values on the prompt, the answer's logit is
    exactly the sum of its paths token → heads/MLPs → answer. For each query, four graphs are traced, each at
    its own instruction's answer: instruction A, a rephrasing of A (A′), instruction B and a rephrasing of B
    (B′), and compared layer by layer (weighted Jaccard of edge mass). The gap is the similarity of the
    same-instruction pairs (A–A′, B–B′) minus that of the different-instruction pairs. A model is called
    selective at a layer where the gap beats a permutation null (the four graphs relabelled) and its bootstrap
    CI excludes 0, both corrected over layers. The two instructions differ in their tokens and answers as
    well, so a model that follows neither can show a gap too: the control is the base model's gap on the same
    queries (difference in differences). Behaviour: whether the A-vs-B graph distance tracks how much the
    model's next token changes between A and B (docs/tracing.md).
    """
    runs = [r for r in drawn if _compared(r)]
    singles = [r for r in drawn if _single_trace(r)]
    for run in runs:
        summ = run.json("compare")
        subtasks = next(iter(summ.values())).get("subtasks", []) if summ else []
        s.add(h.heading(f"{run.manifest.get('task') or ''}: {' vs '.join(subtasks)} · "
                        f"{run.args.get('samples', '?')} samples, {run.args.get('split', 'all')} split ({run.rel})"))
        if run.has("selectivity"):
            s.add(*_selectivity_blocks(ctx, run))
        else:
            s.add(h.caveat("This run predates the selectivity table (selectivity.parquet): its A-vs-B gap has no "
                           "permutation null, no confidence interval and no base-model control, so it is not "
                           "evidence that an instruction selects a circuit. Rerun `ivlens trace --compare`."))
        curves = {m: {"ab": v.get("per_layer_ab") or [], "baseline": v.get("per_layer_baseline") or []}
                  for m, v in summ.items()}
        s.add(h.figure(overlap_curves(curves, ctx.models),
                       "Overlap by layer: mean weighted Jaccard of the edge mass of the two instructions' path graphs "
                       "(solid) and of each instruction's graph with a rephrasing of it (dashed), one panel per "
                       "model.", ctx.data(run, "compare", "compare.json")))
        rows = []
        for m, v in summ.items():
            def mean(metric, which, v=v):
                return (v.get(metric) or {}).get(which, {}).get("mean")
            rows.append({"model": m, "weighted Jaccard A vs B": mean("weighted_jaccard", "ab"),
                         "weighted Jaccard reworded": mean("weighted_jaccard", "baseline"),
                         "top-k overlap A vs B": mean("top_k_overlap", "ab"),
                         "top-k overlap reworded": mean("top_k_overlap", "baseline"),
                         "path Jaccard A vs B": mean("path_jaccard", "ab"),
                         "part layer": v.get("part_layer"),
                         "Wilcoxon p (A vs B < reworded)": (v.get("wilcoxon_ab_vs_baseline") or {}).get("pvalue"),
                         "completeness max rel. error": v.get("completeness_max_rel_err")})
        s.add(h.table(pd.DataFrame(rows), "Summary per model: similarity of the two instructions' graphs against "
                                          "each instruction's graph with a rephrasing of it (reworded; whole "
                                          "graph, uncorrected); part layer: the first layer where A vs B falls "
                                          "below the baseline by half the largest gap; completeness: the largest "
                                          "relative gap between the paths' sum and the model's logit.",
                      ctx.data(run, "compare.json", "compare")))
        if run.has("sample_paths"):
            paths = run.table("sample_paths")
            s.add(h.figure(sample_paths(paths, ctx.models),
                           "The top 10 exact paths of one query under each instruction (rows) and model (columns), "
                           "over the token × layer grid: a path enters at its token (left), hops through heads "
                           "(labelled H<head>, from the source to the destination token) and MLPs (grey squares) "
                           "and reaches the answer at the last token (right); red paths raise the answer's logit, "
                           "blue ones lower it, width by size; the dotted green line and green token mark T_inst.",
                           ctx.data(run, "sample_paths")))
        else:
            s.add(h.note("This run predates the stored sample paths (sample_paths.parquet): no path drawing."))
    for run in singles:
        s.add(*_single_traces(ctx, run))
    return s


def _ci(lo: float, hi: float) -> str:
    return "–" if pd.isna(lo) or pd.isna(hi) else f"[{lo:+.3f}, {hi:+.3f}]"


def _selectivity_blocks(ctx: Context, run: Run) -> list[str]:
    """A compare run's selectivity: what its verdicts support (one generated sentence per model), the figure and
    the table (:mod:`ivlens.tracing.selectivity`)."""
    sel = run.table("selectivity")
    models = [m for m in ctx.models if m in set(sel.model)] + _present_models(sel, ctx.models)
    first = sel.iloc[0]
    sentences = verdict_sentences(sel.to_dict("records"))
    blocks = [h.para("What the data support: " + " ".join(sentences[m] for m in models if m in sentences))]
    if not sel.is_base.any():
        blocks.append(h.caveat("No base model in this run (`--base NAME`, or a study model labelled `base`): the gap "
                               "has no control for what the instructions' tokens and answers do in a model that "
                               "follows neither, so \"selective\" here does not mean post-training made it so."))
    data = ctx.data(run, "selectivity")
    blocks.append(h.figure(selectivity(sel, models),
                           f"Top: the gap by layer (mean over {int(first.n)} queries ± {first.ci_level:.1%} bootstrap "
                           "CI, Bonferroni over layers; filled: selective), the permutation null's band (grey, at the "
                           f"level {first.correction} tests each layer at, as the verdict: above it, the "
                           f"{first.correction}-corrected p is below {first.alpha:g}) and "
                           "the base model's gap (dashed). Bottom: the difference in differences (this model's gap "
                           "− the base model's, paired by query) ± CI; filled: more or less selective than base.",
                           data))
    view = pd.DataFrame({
        "model": sel.model, "layer": sel.layer, "n": sel.n, "within": sel.within, "between": sel.between,
        "gap": sel.gap, "gap CI": [_ci(a, b) for a, b in zip(sel.gap_lo, sel.gap_hi, strict=True)],
        "p (perm., adj.)": sel.p_perm_adj, "verdict": sel.verdict, "DiD": sel["did"],
        "DiD CI": [_ci(a, b) for a, b in zip(sel.did_lo, sel.did_hi, strict=True)],
        "p DiD (adj.)": sel.p_did_adj, "vs base": sel.did_verdict, "answer changes": sel.answer_change_rate,
        "TV mean": sel.tv_mean,
        "ρ(distance, TV)": sel.behaviour_rho,
        "ρ CI": [_ci(a, b) for a, b in zip(sel.behaviour_rho_lo, sel.behaviour_rho_hi, strict=True)],
        "r(distance, answer changes)": sel.point_biserial})
    blocks.append(h.table(view, f"Selectivity per model and layer. within / between: mean weighted Jaccard of the "
                                f"same-instruction and of the different-instruction pairs; gap = within − between, "
                                f"its {first.ci_level:.1%} bootstrap CI and its permutation p ({first.correction} over "
                                f"layers); verdict: selective where p < {first.alpha:g} and the CI lies above 0. DiD: "
                                "the gap minus the base model's on the same queries, its CI and sign-flip p "
                                "(corrected the same way). Answer changes: the share of queries whose greedy next "
                                "token differs between A and B; TV mean: the mean total variation distance between "
                                "its next-token distributions under A and B (near 1: it answers each instruction "
                                "with certainty, and ρ has little behaviour left to track); ρ: Spearman "
                                "correlation over queries of the A-vs-B "
                                "graph distance (1 − J) at the layer with the total variation distance between the "
                                "next-token distributions under A and B; r: its point-biserial correlation with the "
                                "answer changing (empty where the answer changes in every query or in none).",
                          data))
    return blocks


def _single_traces(ctx: Context, run: Run) -> list[str]:
    """A single-prompt trace run (``ivlens trace`` without ``--compare``): per model, its top paths drawn and
    listed, from ``<model>.paths.json``."""
    blocks = [h.heading(f"single-prompt trace ({run.rel}): {run.manifest.get('task') or 'a prompt'}")]
    rows, names = [], run.names(".paths.json")
    for name in names:
        summ = run.json(f"{name}.paths")
        for rank, p in enumerate(summ.get("paths", [])):
            rows.append({"model": name, "subtask": run.args.get("subtask") or "prompt", "sample": run.args.get("sample"),
                         "query": "", "rank": rank, "value": p["value"], "source": p["source"], "layer": p["layer"],
                         "pos": p["pos"], "hops": json.dumps(p["hops"]), "text": p.get("text", ""),
                         "tokens": json.dumps(summ.get("tokens") or []), "t_inst": None,
                         "n_layers": summ.get("n_layers") or n_layers_of(run)})
        blocks.append(h.para(f"{name}: the paths sum to {summ.get('value', float('nan')):.4g}; the model's logit is "
                             f"{summ.get('real', float('nan')):.4g} (completeness error "
                             f"{summ.get('completeness_rel_err', float('nan')):.1e})."))
    table = pd.DataFrame(rows)
    data = [(f"{run.rel}/{n}.paths.json", ctx.href(run, f"{n}.paths.json")) for n in names]
    if not table.empty and all(json.loads(t) for t in table.tokens):
        blocks.append(h.figure(sample_paths(table, ctx.models),
                               "The top 10 exact paths of the prompt per model, over the token × layer grid (red "
                               "raises the target's logit, blue lowers it, width by size).", data))
    if not table.empty:
        blocks.append(h.table(table[["model", "rank", "value", "text"]], "The top exact paths and their "
                                                                         "contributions.", data))
    return blocks


@runs_section("trace", having="readout_components", id="iv-construction",
              title="IV construction: which components write the instruction vector")
def iv_construction_section(ctx: Context, runs: list[Run], s: h.Section) -> h.Section:
    """IV construction.

    The traced value is a linear read-out y = w · resid_l[t] of the residual stream after block l at position
    t (here a probe's class direction at T_inst, the instruction's last token). With norms, attention patterns
    and MLP gates frozen on the prompt, y is exactly the sum of its paths; an edge's value is the total of
    every path through it. Heads, MLPs and biases of any one sublayer (with the residual skip) sum to y, so a
    component's value is its share of writing the IV; values of different layers overlap (a path crosses every
    layer) and do not add up.
    """
    for run in runs:
        comp = run.table("readout_components")
        info = run.manifest.get("readout") or {}
        models = [m for m in ctx.models if m in set(comp.model)] + [m for m in _present_models(comp, ctx.models)]
        first = next(iter(info.values()), {})
        s.add(h.heading(f"{run.manifest.get('task') or 'a prompt'} · {run.args.get('subtask') or ''} "
                        f"· read-out {run.args.get('readout')} at {run.args.get('position') or 'last'} ({run.rel})"))
        s.add(h.para(f"Read-out: {first.get('name', '?')}, layer {first.get('layer', '?')}, position "
                     f"{first.get('pos', '?')}. " + "; ".join(
                         f"{m}: y = {v['value']:.4g} (model {v['real']:.4g}, completeness error "
                         f"{v['completeness_rel_err']:.1e})" for m, v in info.items()) + "."))
        s.add(h.figure(construction_heatmaps(comp, models),
                       "Which heads and MLPs write the IV, per model (base / SFT / DPO side by side): the signed "
                       "total of every path through each head (H<h>), MLP and bias of each layer (rows; emb: the "
                       "embeddings) into the read-out, divided by that model's |y| (the probes of the three models "
                       "differ in scale); red raises the probe's class logit, blue lowers it.",
                       ctx.data(run, "readout_components")))
        s.add(h.figure(construction_tokens(comp, models),
                       "From which tokens: the total of all paths that start at each token of the prompt (up to "
                       "T_inst) divided by |y|, one bar per model; with the bias terms these sum to y exactly.",
                       ctx.data(run, "readout_components")))
        s.add(h.table(_top_components(comp, models), "The largest heads and MLPs by |value| per model, the token "
                                                     "each reads most from (head) or acts at (MLP), and the share "
                                                     "of y (value / y; shares of different layers overlap).",
                      ctx.data(run, "readout_components")))
    return s


def _top_components(comp: pd.DataFrame, models: list[str], top: int = 8) -> pd.DataFrame:
    """The ``top`` heads and MLPs by |contribution| per model, side by side: rank, component, its value, its share
    of the read-out's value, and the token a head reads most from (a MLP: the position it acts at most)."""
    cols = {}
    for m in models:
        c = comp[(comp.model == m) & comp.component.isin(["head", "mlp"])]
        if c.empty:
            continue
        total = readout_value(comp[comp.model == m])
        per = c.groupby(["layer", "component", "head"], as_index=False).value.sum()
        per = per.reindex(per.value.abs().sort_values(ascending=False).index).head(top)
        names, shares = [], []
        for r in per.itertuples():
            rows = c[(c.layer == r.layer) & (c.component == r.component) & (c["head"] == r.head)]
            main = rows.loc[rows.value.abs().idxmax()]
            label = f"L{r.layer}H{r.head}" if r.component == "head" else f"L{r.layer} MLP"
            names.append(f"{label} ← {main.token!r}@{main.src}")
            shares.append(r.value / total if total else float("nan"))
        cols[f"{m} component"] = names + [""] * (top - len(names))
        cols[f"{m} value"] = list(per.value) + [float("nan")] * (top - len(per))
        cols[f"{m} share"] = shares + [float("nan")] * (top - len(shares))
    return pd.DataFrame({"rank": range(1, top + 1), **cols})


def _present_models(comp: pd.DataFrame, order: list[str]) -> list[str]:
    """Models of ``comp`` that the study's order lacks (a run of models outside the study's labels)."""
    return [m for m in dict.fromkeys(comp.model) if m not in order]



tracing_section.omitted = ("circuit selectors", "trace --compare")  # the page's note when no run draws it


iv_construction_section.omitted = ("IV construction", "trace --readout")  # the page's note when no run draws it
