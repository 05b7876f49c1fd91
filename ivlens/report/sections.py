"""What each section of the report says: the tables and figures of one analysis, read from its finished runs.

Each ``<name>_section(ctx)`` returns a :class:`~ivlens.report.html.Section`, or ``None`` when the study holds no
finished run of that analysis (the page then lists it among the omitted sections). Models appear side by side in
the study's order (base / SFT / DPO).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import figures
from . import html as h
from .reader import Run, Study

log = logging.getLogger(__name__)


@dataclass
class Context:
    """The study and where the page is written (links to tables are relative to it)."""

    study: Study
    page_dir: Path

    @property
    def models(self) -> list[str]:
        return self.study.model_order

    def href(self, run: Run, name: str) -> str:
        """Relative link from the page to ``run``'s table ``name`` (or any file name with a suffix)."""
        p = run.path / name if "." in name else (run.table_path(name) or run.path / f"{name}.parquet")
        return os.path.relpath(p, self.page_dir).replace(os.sep, "/")

    def data(self, run: Run, *names: str) -> list[tuple[str, str]]:
        """``[(label, href)]`` for the tables ``names`` of ``run`` (label: run folder / file)."""
        out = []
        for n in names:
            href = self.href(run, n)
            label = f"{run.rel}/{Path(href).name}" if run.rel != "." else Path(href).name
            out.append((label, href))
        return out


def _fmt_args(args: dict) -> str:
    return "  ".join(f"{k}={v}" for k, v in args.items() if v not in (None, "", [], {}))


def _n_layers(run: Run, *tables: pd.DataFrame) -> int:
    sizes = [int(m["n_layers"]) for m in run.models if m.get("n_layers")]
    if sizes:
        return max(sizes)
    best = 0
    for t in tables:
        if "layer" in t:
            best = max(best, int(t.layer.max()) + 1)
        if "layers" in t:
            best = max(best, 1 + max(int(x) for s in t.layers for x in str(s).split(",")))
    return best


def guard(fn):
    """A section that fails to draw becomes a note naming the error, so one bad table never loses the page
    (idempotent: a guarded section is returned as it is)."""
    if getattr(fn, "guarded", False):
        return fn

    def wrapped(ctx: Context) -> h.Section | None:
        try:
            return fn(ctx)
        except Exception as e:  # noqa: BLE001 - the page must still be written; the error is shown in it
            log.exception("report section %s failed", fn.__name__)
            title = fn.__doc__.strip().splitlines()[0].rstrip(".") if fn.__doc__ else fn.__name__
            return h.Section(fn.__name__.removesuffix("_section"), title).add(
                h.caveat(f"This section could not be drawn: {type(e).__name__}: {e}"))

    functools.update_wrapper(wrapped, fn)  # the module's name for it: a guarded section pickles by reference
    wrapped.guarded = True
    return wrapped


# ----------------------------------------------------------------------------- setup
@guard
def setup_section(ctx: Context) -> h.Section:
    """Setup."""
    s = h.Section("setup", "Setup")
    st = ctx.study
    s.add(h.para("What this is: a study of how language models follow instructions. An instruction's *instruction "
                 "vector* (IV) is the residual stream at the instruction's last token (T_inst). The analyses ask "
                 "whether the models follow the instructions (instruction following), at which layers an IV "
                 "patched into a prompt without instruction makes the model do the task (IV localisation), whether "
                 "IVs of differently worded instructions are linearly separable by task (probes), and whether "
                 "two instructions route the same query through different paths of the network (circuit "
                 "selectors). Checkpoints of one model after pretraining (base), supervised fine-tuning (SFT) and "
                 "preference optimisation (DPO) are shown side by side.".replace("*", "")))
    s.add(h.para(f"This report reads {len(st.runs)} run director{'y' if len(st.runs) == 1 else 'ies'} under "
                 f"`{st.root}`. Every table and figure below links the Parquet file it was drawn from; the paths "
                 "are relative to this page, so the page and its directory can be moved together."))
    models = pd.DataFrame([{"model": m.get("name"), "architecture": m.get("architecture"),
                            "layers": m.get("n_layers"), "d_model": m.get("d_model"), "heads": m.get("n_heads"),
                            "dtype": m.get("dtype"), "weight hash": m.get("weight_hash") or "–",
                            "path": m.get("path"), "revision": m.get("revision") or "–"} for m in st.models])
    if not models.empty:
        s.add(h.heading("Models"), h.table(models, "The checkpoints compared (weight hash: sha256 prefix of the "
                                                   "weight files, so two reports can be checked to use the same "
                                                   "weights)."))
    runs = pd.DataFrame([{"run": r.rel, "analysis": r.command, "task": r.manifest.get("task") or "–",
                          "seed": r.manifest.get("seed"), "status": r.manifest.get("status"),
                          "created": str(r.manifest.get("created") or "–").replace("T", " "), "wall s": r.manifest.get("wall_seconds"),
                          "git commit": (r.manifest.get("git_commit") or "–")[:10],
                          "options": _fmt_args(r.args)} for r in st.runs])
    s.add(h.heading("Runs, tasks, seeds and options"),
          h.table(runs, "One row per run directory: the analysis (the `ivlens` command), its task, seed and options "
                        "as recorded in its manifest.json."))
    commands = "\n".join(f"ivlens {r.command}  {_fmt_args(r.args)}" + (f"  # {r.rel}" if r.rel != "." else "")
                         for r in st.runs)
    s.add(h.para("The analyses and options of each run (the `ivlens` command and its options, from the manifests):"),
          h.pre(commands))
    libs = {}
    for r in st.runs:
        key = (r.manifest.get("ivlens_version"), r.manifest.get("python"), r.manifest.get("platform"),
               tuple(sorted((r.manifest.get("libraries") or {}).items())))
        libs.setdefault(key, []).append(r.rel)
    rows = []
    for (ver, py, plat, lib), rels in libs.items():
        rows.append({"runs": ", ".join(rels) if len(libs) > 1 else "all", "ivlens": ver, "python": py,
                     **{k: v or "–" for k, v in lib}, "platform": plat})
    s.add(h.heading("Library versions"), h.table(pd.DataFrame(rows), "Versions recorded in the manifests."))
    if st.unfinished:
        s.add(h.caveat("Not finished, so not reported: " + ", ".join(f"{r.rel} ({r.command})" for r in st.unfinished)
                       + ". Resume them (`--resume RUN`) and rebuild the report."))
    return s


# ----------------------------------------------------------------------------- organism
@guard
def organism_section(ctx: Context) -> h.Section | None:
    """The model organisms."""
    runs = [r for r in ctx.study.of("organism") if r.json("card") is not None]
    if not runs:
        return None
    s = h.Section("organism", "The model organisms")
    for run in runs:
        card = run.json("card")
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
                s.add(h.figure(figures.organism_transfer(iv, ctx.models),
                               "Single-layer IV transfer measured when the organism was built: the share of "
                               "queries answered right after patching the instruction's IV into the query-only "
                               "prompt at one layer, per stage (columns) and subtask (rows), one line per "
                               "query-only target (bare / formatted) and patched position.",
                               ctx.data(run, "iv_transfer")))
    return s


# ----------------------------------------------------------------------------- eval
@guard
def eval_section(ctx: Context) -> h.Section | None:
    """Instruction following."""
    runs = [r for r in ctx.study.of("eval") if r.has("summary")]
    if not runs:
        return None
    s = h.Section("eval", "Instruction following")
    s.add(h.para("Greedy answers of each model with the subtask's instruction (`instructed`), without it "
                 "(`query_only`) and with the other subtask's instruction (`other_instruction`). Accuracy: the "
                 "answer is right; IA: the answer lies in the subtask's label space (the paper's "
                 "instruction-following accuracy)."))
    frames = []
    for r in runs:
        d = r.table("summary")
        d.insert(0, "split", r.args.get("split", "all"))
        frames.append((r, d))
    for split in dict.fromkeys(d.split.iloc[0] for _, d in frames):
        part = [(r, d) for r, d in frames if d.split.iloc[0] == split]
        summary = pd.concat([d for _, d in part], ignore_index=True)
        data = [x for r, _ in part for x in ctx.data(r, "summary")]
        s.add(h.heading(f"{split} queries"),
              h.figure(figures.eval_bars(summary, ctx.models),
                       f"Accuracy (top) and IA (bottom) per subtask and condition, {split} queries; one bar per "
                       "model.", data))
        wide = summary.pivot_table(index=["task", "subtask", "condition"], columns="model",
                                   values=["accuracy", "ia"], sort=False)
        wide.columns = [f"{metric} {model}" for metric, model in wide.columns]
        order = [f"{metric} {m}" for metric in ("accuracy", "ia") for m in ctx.models if f"{metric} {m}" in wide]
        wide = wide[order].reset_index()
        n = summary.groupby("task")["n"].max().to_dict()
        s.add(h.table(wide, f"Accuracy and IA, {split} queries (queries per task: "
                            f"{', '.join(f'{k} {v}' for k, v in n.items())}).", data))
        decides = [(r, r.table("decides")) for r, _ in part if r.has("decides")]
        if decides:
            dec = pd.concat([d for _, d in decides], ignore_index=True)
            wide = dec.pivot_table(index="task", columns="model", values="decides", sort=False)
            wide = wide[[m for m in ctx.models if m in wide] + [m for m in wide if m not in ctx.models]].reset_index()
            s.add(h.table(wide, f"The instruction decides: the share of {split} queries for which each subtask's "
                                "instruction gives that subtask's right answer.",
                          [x for r, _ in decides for x in ctx.data(r, "decides")]))
    return s


# ----------------------------------------------------------------------------- patching
LAST_CAVEAT = ("At the last position a layer set's patch equals the patch of its highest layer alone (the highest "
               "layer overwrites the only residual later layers read there), so the joint effect of a set is its "
               "highest layer's single effect and its interaction is minus the sum of the lower layers' singles: "
               "fixed by construction, not data. Only positions before the last (e.g. `first`) show how layers "
               "cooperate.")


def _first_is_last(run: Run) -> tuple[int, int] | None:
    """``(samples where the first patched position is the last, samples)`` of a patch run, from its rows."""
    if not run.has("patch"):
        return None
    try:
        rows = run.table("patch", columns=["model", "sample", "position", "pos_index"])
    except Exception:  # noqa: BLE001 - an older table without pos_index: no claim
        return None
    pos = rows.drop_duplicates().pivot_table(index=["model", "sample"], columns="position", values="pos_index")
    if "first" not in pos or "last" not in pos:
        return None
    return int((pos["first"] == pos["last"]).sum()), len(pos)


@guard
def patching_section(ctx: Context) -> h.Section | None:
    """IV localisation."""
    runs = [r for r in ctx.study.of("patch") if r.has("single_layer")]
    if not runs:
        return None
    s = h.Section("patching", "IV localisation (layer patching)")
    s.add(h.para("The instruction vector (the residual stream at the instruction's last token T_inst) is patched "
                 "into a query-only prompt at one layer, at every pair and every triplet of layers, at the query's "
                 "first and last positions. Effect: the change of the instructed label's logit against the "
                 "unpatched query-only run. Interaction of a set: its joint effect minus the sum of its layers' "
                 "single effects; a set is super- or subadditive when a paired t-test (Holm-corrected over the "
                 "sets of one model and position) rejects additivity."))
    for run in runs:
        a = run.args
        singles = run.table("single_layer")
        inter = run.table("interactions") if run.has("interactions") else pd.DataFrame()
        n_layers = _n_layers(run, singles, inter)
        s.add(h.heading(f"{run.manifest.get('task') or a.get('task', '')} · {a.get('subtask', '')} · "
                        f"{a.get('target', 'bare')} target · {a.get('samples', 'all')} samples ({run.rel})"))
        if a.get("target", "bare") == "bare":
            s.add(h.note("Bare target: the query alone (e.g. `big`); formatted target: `Adjective: big. Answer:`."))
        s.add(h.figure(figures.single_layer_curves(singles, ctx.models),
                       "Single-layer patching: mean effect (± s.e.m. band) of patching the IV at one layer, per "
                       "position (panels), one line per model.", ctx.data(run, "single_layer")))
        coincide = _first_is_last(run)
        caveat = LAST_CAVEAT
        if coincide and coincide[0]:
            caveat += (f" Here the first position is also the last for {coincide[0]} of {coincide[1]} "
                       "(model, sample) prompts (a one-token query on the bare target), so the first position's "
                       "interactions are fixed by construction there too.")
        if not inter.empty:
            s.add(h.caveat(caveat))
        for size, name in ((2, "pairs"), (3, "triplets")):
            if inter.empty or not (inter.set_size == size).any():
                continue
            for value, what in (("mean_joint", "mean joint effect"),
                                ("mean_interaction", "mean interaction (joint − sum of singles)")):
                diag = " (diagonal: the single layer)" if size == 2 and value == "mean_joint" else ""
                layout = ("layer a × layer b" if size == 2
                          else "rows: the two lower layers a,b; columns: the highest layer c")
                s.add(h.figure(figures.set_heatmaps(inter, singles, ctx.models, size, value, n_layers),
                               f"{name.capitalize()} of layers: {what}{diag}, {layout}; rows of panels: position, "
                               "columns: model; one colour scale per position, shared by the models (its bar "
                               "on the right), red positive, blue negative.",
                               ctx.data(run, "interactions", "single_layer")))
        if not inter.empty:
            verdicts = (inter.groupby(["model", "position", "set_size", "verdict"], sort=False).size()
                        .unstack("verdict", fill_value=0).reset_index())
            everywhere = bool(coincide and coincide[0] == coincide[1])
            verdicts.insert(3, "interaction is", ["fixed by construction" if p == "last" or (p == "first" and everywhere)
                                                  else "data" for p in verdicts.position])
            s.add(h.table(verdicts, "Interaction verdicts: number of layer sets per verdict (Holm-corrected paired "
                                    "t-test of joint against additive, α = 0.05). Rows marked *fixed by "
                                    "construction* are not evidence about cooperation between layers (see the note "
                                    "above).".replace("*", ""), ctx.data(run, "interactions")))
        if run.has("additivity"):
            s.add(h.table(run.table("additivity"), "Additivity per set size: shares of super- and subadditive sets, "
                                                   "of sets meeting the paper's per-sample criterion (joint ≥ "
                                                   "additive, sign test; no value where the corrected sign test "
                                                   "cannot reach significance with this many queries, as "
                                                   "paper_criterion_power says) and passing the paper's released test "
                                                   "(a t-test against 50 that passes for any data; shown for "
                                                   "comparison only).", ctx.data(run, "additivity")))
        if run.has("linearity"):
            _linearity(s, ctx, run)
        if run.has("strongest_sets"):
            top = run.table("strongest_sets")
            top = top.groupby(["model", "position"], sort=False).head(3)
            s.add(h.table(top, "The strongest layer sets (top 3 per model and position): mean effect, IA, accuracy "
                               "of the top-1 token and within the label space.", ctx.data(run, "strongest_sets")))
    return s


def _linearity(s: h.Section, ctx: Context, run: Run) -> None:
    """The linear estimate against the exact effect, per set size (and the screen, where the run had one)."""
    lin = run.table("linearity")
    effect = figures.effect_label(lin.effect.iloc[0])
    s.add(h.figure(figures.linearity_curves(lin, ctx.models),
                   "How much of each patch is linear: every row's first-order estimate Σ_l ∇_l · (IV_l − clean_l) "
                   "(gradients of the clean query-only run, attribution patching) against its exact effect "
                   f"({effect}), per set size. Top: the fraction of the effect's variance the estimate explains "
                   "(R², 1 = exact, 0 = no better than the mean); bottom: the mean |effect − estimate| against the "
                   "mean |effect|; bars: 95% bootstrap CIs over samples (the R² axis stops at −1). Singles are the control (one layer's own "
                   "curvature); a drop from singles to pairs and triplets is interaction beyond first order. At the "
                   "last position a set's exact effect is its highest layer's alone while the estimate sums every "
                   "layer, so there sets are non-linear by construction.", ctx.data(run, "linearity", "patch")))
    shown = lin[["model", "position", "set_size", "n_sets", "n_samples", "r2", "r2_lo", "r2_hi",
                 "rel_nonlinearity", "rel_nonlinearity_lo", "rel_nonlinearity_hi", "corr", "mean_abs_effect",
                 "mean_abs_nonlinearity"]]
    s.add(h.table(shown, "The linear estimate per set size: R², mean |nonlinearity| / mean |effect| and Pearson's "
                         "correlation of estimate and effect, with 95% bootstrap CIs over samples.",
                  ctx.data(run, "linearity")))
    if run.has("screen"):
        sc = run.table("screen", columns=["model", "position", "layers", "set_size", "run", "k"])
        multi = sc[sc.set_size >= 2].drop_duplicates(["model", "layers"])
        s.add(h.note(f"Screened run (--screen {int(sc.k.iloc[0])}): the exact engine ran the singles and "
                     f"{int(multi['run'].sum()):,} of {len(multi):,} multi-layer sets (each position's top "
                     f"{int(sc.k.iloc[0])} per set size by |mean linear estimate|), so the tables above hold only "
                     "those sets; the screen table ranks them all."))


# ----------------------------------------------------------------------------- probing
@guard
def probing_section(ctx: Context) -> h.Section | None:
    """Probes."""
    runs = [r for r in ctx.study.of("probe") if r.has("probe_accuracy")]
    if not runs:
        return None
    s = h.Section("probing", "Linear probes on instruction vectors")
    s.add(h.para("IVs of many rephrasings of each instruction, one per layer; a logistic-regression probe predicts "
                 "the subtask. Controls: the same probe on shuffled labels, the majority class, and a probe trained "
                 "on some phrasings and tested on phrasings it never saw (held-out)."))
    for run in runs:
        acc = run.table("probe_accuracy")
        s.add(h.heading(f"tasks {run.manifest.get('task') or ''} ({run.rel})"),
              h.figure(figures.probe_accuracy(acc, ctx.models),
                       "Probe accuracy by layer: cross-validated (solid, ± std band), on held-out phrasings "
                       "(dotted), shuffled-label control (dashed black) and majority class (grey); rows: probes "
                       "(`all`: every subtask; `task:…`: the two subtasks of one task), columns: models.",
                       ctx.data(run, "probe_accuracy")))
        sub = acc[acc.target == "subtask"] if "target" in acc else acc
        metrics = [(c, label) for c, label in (("cv_mean", "CV"), ("heldout_acc", "held-out"),
                                               ("shuffled_mean", "shuffled")) if c in sub]
        wide = sub.pivot_table(index=["probe", "layer"], columns="model", values=[c for c, _ in metrics],
                               sort=False)
        names = dict(metrics)
        models = [m for m in ctx.models if m in set(sub.model)]
        wide.columns = [f"{names[c]} {m}" for c, m in wide.columns]
        wide = wide[[f"{label} {m}" for _, label in metrics for m in models]].reset_index()
        majority = sub.groupby(["probe", "layer"]).majority.mean()  # aligned by (probe, layer), not by row order
        wide["majority"] = majority.reindex(pd.MultiIndex.from_frame(wide[["probe", "layer"]])).to_numpy()
        s.add(h.table(wide, "Probe accuracy by layer and model: cross-validated (CV), on held-out phrasings and "
                            "with shuffled labels; majority: the majority class's share.",
                      ctx.data(run, "probe_accuracy")))
        if run.has("projections"):
            proj = run.table("projections")
            layers = run.manifest.get("figure_layers") or sorted(proj.layer.unique())[-1:]
            method = "lda" if (proj.method == "lda").any() else "pca"
            s.add(h.figure(figures.projection_scatter(proj, ctx.models, layers, method),
                           f"{method.upper()} of the IVs at layers {', '.join(map(str, layers))} (rows), models "
                           "side by side (columns); one colour per subtask, filled: training phrasings, hollow: "
                           "held-out phrasings.", ctx.data(run, "projections")))
    return s


# ----------------------------------------------------------------------------- tracing
@guard
def tracing_section(ctx: Context) -> h.Section | None:
    """Circuit selectors."""
    runs = [r for r in ctx.study.of("trace") if r.json("compare") is not None]
    singles = [r for r in ctx.study.of("trace") if r.json("compare") is None and r.names(".paths.json")
               and not r.has("readout_components")]
    if not runs and not singles:
        return None
    s = h.Section("tracing", "Circuit selectors (exact path tracing)")
    s.add(h.para("With norms, attention patterns and MLP gates frozen at their values on the prompt, the answer's "
                 "logit is exactly the sum of its paths token → heads/MLPs → answer. For each query, four graphs "
                 "are traced, each at its own instruction's answer: instruction A, a rephrasing of A (A′), "
                 "instruction B and a rephrasing of B (B′), and compared layer by layer (weighted Jaccard of edge "
                 "mass). The gap is the similarity of the same-instruction pairs (A–A′, B–B′) minus that of the "
                 "different-instruction pairs. A model is called selective at a layer where the gap beats a "
                 "permutation null (the four graphs relabelled) and its bootstrap CI excludes 0, both corrected over "
                 "layers. The two instructions differ in their tokens and answers as well, so a model that follows "
                 "neither can show a gap too: the control is the base model's gap on the same queries (difference "
                 "in differences). Behaviour: whether the A-vs-B graph distance tracks how much the model's next "
                 "token changes between A and B (docs/tracing.md)."))
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
        s.add(h.figure(figures.overlap_curves(curves, ctx.models),
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
            s.add(h.figure(figures.sample_paths(paths, ctx.models),
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
    from ivlens.tracing.selectivity import verdict_sentences

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
    blocks.append(h.figure(figures.selectivity(sel, models),
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
                         "n_layers": summ.get("n_layers") or _n_layers(run)})
        blocks.append(h.para(f"{name}: the paths sum to {summ.get('value', float('nan')):.4g}; the model's logit is "
                             f"{summ.get('real', float('nan')):.4g} (completeness error "
                             f"{summ.get('completeness_rel_err', float('nan')):.1e})."))
    table = pd.DataFrame(rows)
    data = [(f"{run.rel}/{n}.paths.json", ctx.href(run, f"{n}.paths.json")) for n in names]
    if not table.empty and all(json.loads(t) for t in table.tokens):
        blocks.append(h.figure(figures.sample_paths(table, ctx.models),
                               "The top 10 exact paths of the prompt per model, over the token × layer grid (red "
                               "raises the target's logit, blue lowers it, width by size).", data))
    if not table.empty:
        blocks.append(h.table(table[["model", "rank", "value", "text"]], "The top exact paths and their "
                                                                         "contributions.", data))
    return blocks


# ----------------------------------------------------------------------------- steering
@guard
def steering_section(ctx: Context) -> h.Section | None:
    """Steering with IV directions."""
    from ivlens.steering.figures import dose_response_curves, versus_patching

    runs = [r for r in ctx.study.of("steer") if r.has("dose_response")]
    if not runs:
        return None
    s = h.Section("steering", "Steering with IV directions, against patching")
    s.add(h.para("Instead of patching the IV, a single direction `v` is added to the query-only prompt's residual "
                 "stream after one layer: `α · s_l · v̂`, with `v̂` the unit direction (mean IV of the instructed "
                 "subtask A, the difference of A's and B's mean IVs, a probe's A-vs-B direction or a probe run's "
                 "class-mean difference) and "
                 "`s_l` the mean norm of A's IVs at that layer, so α = 1 adds a vector as long as a typical IV. "
                 "It is added at the first position (where patching writes the IV), at the last, or at every "
                 "token. Metrics are patching's: IA (the top token is in A's label space), accuracy, the label's "
                 "logit. See docs/steering.md."))
    for run in runs:
        dose = run.table("dose_response")
        rows = run.table("steer")
        base = run.table("baselines")
        head = rows[["task", "subtask", "target"]].iloc[0]
        s.add(h.heading(f"{head.task} · {head.subtask} · {head.target} target · "
                        f"{rows['sample'].nunique()} samples ({run.rel})"))
        for vector in dict.fromkeys(dose.vector):
            s.add(h.figure(dose_response_curves(dose, ctx.models, vector),
                           f"Dose-response, vector {vector}: IA (± s.e.m. band) against α (symmetric log scale) "
                           "for each steered layer (dark: early, light: late); rows of panels: where α·v is "
                           "added, columns: model.", ctx.data(run, "dose_response")))
        if not run.has("steer_vs_patch"):
            s.add(h.note("No patch run of the same task, subtask, target and format was given (`--patch-run`; in a "
                         "study, a transfer patch step of the same setting): no comparison with patching."))
            continue
        cmp = run.table("steer_vs_patch")
        link = ctx.data(run, "steer_vs_patch")[0]
        prun = run.args.get("patch_run")
        unsteered = base[base.run == "target"].groupby("model", as_index=False).ia.mean()
        s.add(h.figure(versus_patching(cmp, ctx.models, unsteered),
                       "Best steering IA per layer (over vectors, positions and α) against the best patching IA "
                       f"of that single layer and of the best pair or triplet containing it ({prun}); "
                       "dotted: the unsteered query-only IA; crosses: steering significantly below the "
                       "single-layer patch (paired t-test over shared samples, Holm over layers).",
                       [link, *ctx.data(run, "steer")]))
        shown = cmp[["model", "layer", "steer_ia", "steer_acc", "steer_best_acc", "steer_vector", "steer_position",
                     "steer_alpha", "patch_ia", "patch_acc", "set_ia", "set_acc", "set_layers", "n", "diff", "p_t_adj",
                     "verdict"]]
        s.add(h.table(shown, "Steering against patching per layer: best steering IA, its accuracy and configuration, "
                             "and the best accuracy of any steering configuration at the layer; the single-layer "
                             "patch and the best set containing the layer (IA and accuracy); the paired IA "
                             "difference (steering − single-layer patch) and its Holm-corrected p. IA counts any "
                             "answer in the instructed label space, accuracy the instructed answer: where steering "
                             "reaches IA but not accuracy, the direction moves the model into the label space "
                             "without the query's answer. The best configuration is chosen on the tested samples, "
                             "among more choices for steering (vectors × positions × α) than for patching "
                             "(positions), so a shortfall is conservative.",
                       [link]))
    return s


# ----------------------------------------------------------------------------- IV construction
def _top_components(comp: pd.DataFrame, models: list[str], top: int = 8) -> pd.DataFrame:
    """The ``top`` heads and MLPs by |contribution| per model, side by side: rank, component, its value, its share
    of the read-out's value, and the token a head reads most from (a MLP: the position it acts at most)."""
    cols = {}
    for m in models:
        c = comp[(comp.model == m) & comp.component.isin(["head", "mlp"])]
        if c.empty:
            continue
        total = figures.readout_value(comp[comp.model == m])
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


@guard
def iv_construction_section(ctx: Context) -> h.Section | None:
    """IV construction."""
    runs = [r for r in ctx.study.of("trace") if r.has("readout_components")]
    if not runs:
        return None
    s = h.Section("iv-construction", "IV construction: which components write the instruction vector")
    s.add(h.para("The traced value is a linear read-out y = w · resid_l[t] of the residual stream after block l at "
                 "position t (here a probe's class direction at T_inst, the instruction's last token). With norms, "
                 "attention patterns and MLP gates frozen on the prompt, y is exactly the sum of its paths; an "
                 "edge's value is the total of every path through it. Heads, MLPs and biases of any one sublayer "
                 "(with the residual skip) sum to y, so a component's value is its share of writing the IV; values "
                 "of different layers overlap (a path crosses every layer) and do not add up."))
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
        s.add(h.figure(figures.construction_heatmaps(comp, models),
                       "Which heads and MLPs write the IV, per model (base / SFT / DPO side by side): the signed "
                       "total of every path through each head (H<h>), MLP and bias of each layer (rows; emb: the "
                       "embeddings) into the read-out, divided by that model's |y| (the probes of the three models "
                       "differ in scale); red raises the probe's class logit, blue lowers it.",
                       ctx.data(run, "readout_components")))
        s.add(h.figure(figures.construction_tokens(comp, models),
                       "From which tokens: the total of all paths that start at each token of the prompt (up to "
                       "T_inst) divided by |y|, one bar per model; with the bias terms these sum to y exactly.",
                       ctx.data(run, "readout_components")))
        s.add(h.table(_top_components(comp, models), "The largest heads and MLPs by |value| per model, the token "
                                                     "each reads most from (head) or acts at (MLP), and the share "
                                                     "of y (value / y; shares of different layers overlap).",
                      ctx.data(run, "readout_components")))
    return s


def _present_models(comp: pd.DataFrame, order: list[str]) -> list[str]:
    """Models of ``comp`` that the study's order lacks (a run of models outside the study's labels)."""
    return [m for m in dict.fromkeys(comp.model) if m not in order]


SECTIONS = (setup_section, organism_section, eval_section, patching_section, probing_section, steering_section,
            tracing_section, iv_construction_section)
def omitted_as(fn) -> tuple[str, str]:
    """What an omitted section would have shown (its docstring's first line) and the analysis that writes it (its
    name less ``_section``): the note of a section not listed in :data:`OMITTED`."""
    doc = (fn.__doc__ or "").strip().splitlines()
    what = doc[0].rstrip(".") if doc else fn.__name__
    return what[:1].lower() + what[1:], fn.__name__.removesuffix("_section").replace("_", "-")


#: What an omitted section would have shown, and the analysis that writes it.
OMITTED = {"organism_section": ("the organism card", "organism"),
           "eval_section": ("instruction following", "eval"),
           "patching_section": ("IV localisation", "patch"),
           "probing_section": ("probes", "probe"),
           "tracing_section": ("circuit selectors", "trace --compare"),
           "steering_section": ("steering against patching", "steer"),
           "iv_construction_section": ("IV construction", "trace --readout")}
