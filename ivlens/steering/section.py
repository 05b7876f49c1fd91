"""The report's steering section, drawn from finished ``steer`` runs (figures: :mod:`ivlens.steering.figures`)."""

from __future__ import annotations

from ivlens.page import html as h
from ivlens.page.context import Context, runs_section
from ivlens.page.reader import Run

from .figures import dose_response_curves, versus_patching


# ----------------------------------------------------------------------------- section
@runs_section("steer", having="dose_response", id="steering",
              title="Steering with IV directions, against patching")
def steering_section(ctx: Context, runs: list[Run], s: h.Section) -> h.Section:
    """Steering with IV directions.

    Instead of patching the IV, a single direction `v` is added to the query-only prompt's residual stream
    after one layer: `α · s_l · v̂`, with `v̂` the unit direction (mean IV of the instructed subtask A, the
    difference of A's and B's mean IVs, a probe's A-vs-B direction or a probe run's class-mean difference) and
    `s_l` the mean norm of A's IVs at that layer, so α = 1 adds a vector as long as a typical IV. It is added
    at the first position (where patching writes the IV), at the last, or at every token. Metrics are
    patching's: IA of the top-1 token (`ia_top1`: it is in A's label space), accuracy, the label's logit. See
    docs/steering.md.
    """
    for run in runs:
        dose = run.table("dose_response")
        rows = run.table("steer")
        base = run.table("baselines")
        head = rows[["task", "subtask", "target"]].iloc[0]
        s.add(h.heading(f"{head.task} · {head.subtask} · {head.target} target · "
                        f"{rows['sample'].nunique()} samples ({run.rel})"))
        for vector in dict.fromkeys(dose.vector):
            s.add(h.figure(dose_response_curves(dose, ctx.models, vector),
                           f"Dose-response, vector {vector}: IA of the top-1 token (`ia_top1`, ± s.e.m. band) "
                           "against α (symmetric log scale) for each steered layer (dark: early, light: late); "
                           "rows of panels: where α·v is "
                           "added, columns: model.", ctx.data(run, "dose_response")))
        if not run.has("steer_vs_patch"):
            s.add(h.note("No patch run of the same task, subtask, target and format was given (`--patch-run`; in a "
                         "study, a transfer patch step of the same setting): no comparison with patching."))
            continue
        cmp = run.table("steer_vs_patch")
        link = ctx.data(run, "steer_vs_patch")[0]
        prun = run.args.get("patch_run")
        unsteered = base[base.run == "target"].groupby("model", as_index=False).ia_top1.mean()
        s.add(h.figure(versus_patching(cmp, ctx.models, unsteered),
                       "Best steering IA (top-1) per layer (over vectors, positions and α) against the best "
                       f"patching IA (top-1) of that single layer and of the best pair or triplet containing it "
                       f"({prun}); "
                       "dotted: the unsteered query-only IA; crosses: steering significantly below the "
                       "single-layer patch (paired t-test over shared samples, Holm over layers).",
                       [link, *ctx.data(run, "steer")]))
        shown = cmp[["model", "layer", "steer_ia_top1", "steer_acc", "steer_best_acc", "steer_vector",
                     "steer_position", "steer_alpha", "patch_ia_top1", "patch_acc", "set_ia_top1", "set_acc",
                     "set_layers", "n", "diff", "p_t_adj", "verdict"]]
        s.add(h.table(shown, "Steering against patching per layer: best steering IA of the top-1 "
                             "token (`ia_top1`), its accuracy and configuration, and the best accuracy of any "
                             "steering configuration at the layer; the single-layer "
                             "patch and the best set containing the layer (IA and accuracy); the paired IA "
                             "difference (steering − single-layer patch) and its Holm-corrected p (none, and no "
                             "verdict, where the test is undefined: fewer than 2 shared samples or the same IA on "
                             "every one). IA counts any "
                             "answer in the instructed label space, accuracy the instructed answer: where steering "
                             "reaches IA but not accuracy, the direction moves the model into the label space "
                             "without the query's answer. The best configuration is chosen on the tested samples, "
                             "among more choices for steering (vectors × positions × α) than for patching "
                             "(positions), so a shortfall is conservative.",
                       [link]))
    return s



steering_section.omitted = ("steering against patching", "steer")  # the page's note when no run draws it
