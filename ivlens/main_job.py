"""The main job: every analysis ivlens has, on the embedded default (the gist model organisms).

Builds the organisms into the user cache if they are missing, then runs each step on base / SFT / DPO
side by side, writing one run directory per step under one parent directory, plus ``summary.md`` with
the headline tables and ``report.html`` (:mod:`ivlens.report`) with the figures. Each step is a function ``step(ctx) -> markdown``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .cli_common import console, frame_table, progress_bar
from .models.load import LoadedModel, load_model
from .patching.main_step import step_patch
from .runs import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

STAGES = ("base", "sft", "dpo")
TASKS = ("adjectives", "animals")


@dataclass
class MainContext:
    root: Path
    models: list[LoadedModel]  # loaded from ``model_names``, renamed base / sft / dpo
    samples: int | None
    model_names: tuple[str, ...] = ()
    sections: list[str] = field(default_factory=list)
    variant: str = "gist"


def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub markdown table (floats to 3 decimals)."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join(" --- " for _ in df.columns) + "|"
    return "\n".join([head, rule, *("| " + " | ".join(r) + " |" for r in cells)])


def step_organism(ctx: MainContext) -> str:
    """What the organism build measured (its ``card.json``): per stage, task and subtask, the single-layer IV patch
    (through the patching engine) that gives the instructed answer top-1 most often, among the target/position
    configurations where at least 10 % of the queries answer outside the subtask's label space unpatched."""
    from .organism.card import read_card
    from .organism.measure import testable_configs
    from .organism.paths import organism_dir

    directory = organism_dir(ctx.variant)
    card = read_card(directory)
    write_organism_run(ctx, card, directory)
    rows = []
    for stage, tasks in card.get("measured", {}).items():
        for task, m in tasks.items():
            for sub, res in m["iv"]["subtasks"].items():
                target, c = max(testable_configs(m["iv"], sub), key=lambda kc: (kc[1]["exact"], kc[1]["flip"]),
                                default=(None, None))
                if c is None:
                    continue
                rows.append({"stage": stage, "task": task, "subtask": sub, "target/position": target,
                             "layer": c["layer"], "IA unpatched": res["unpatched"][target.split("/")[0]]["ia"],
                             "IA patched": c["ia"], "accuracy patched": c["exact"], "flip": c["flip"]})
    table = pd.DataFrame(rows)
    acc = card.get("acceptance", {})
    failing = [k for k, v in acc.items() if k != "all_pass" and not v["pass"]]
    verdict = ("every check of the organism issue passes" if acc.get("all_pass")
               else f"checks not met: {', '.join(failing)}")
    console.print(frame_table(table, title=f"IV transfer measured in the {ctx.variant} organism build"))
    return "\n".join([
        f"## The organisms ({directory})\n",
        f"{card['made_how']}\n",
        f"Build: {card['timing']['total']:.0f} s on {card['environment']['threads']} threads; {verdict} "
        "(`ivlens organism info`).\n",
        "Single-layer IV transfer: per subtask the target/position/layer whose patch gives the instructed answer "
        "top-1 most often (`accuracy patched`), among those where ≥ 10 % of the queries answer outside the label "
        "space unpatched; `flip` is the share of those moved inside (IA alone can mislead: most adjectives lie in "
        "the antonym label space):\n",
        markdown_table(table) if not table.empty else "(no subtask had off-label answers to move)", "",
    ])


def write_organism_run(ctx: MainContext, card: dict, directory: Path) -> Path:
    """``<root>/organism/``: a run directory holding the card (``card.json``) and its IV transfer curves
    (``iv_transfer.parquet``), so that the report reads the organism like every other step."""

    from .organism.card import iv_transfer_table
    from .runs import RunDir

    run = RunDir.create("organism", ctx.variant, out=ctx.root / "organism", models=[m.describe() for m in ctx.models],
                        args={"variant": ctx.variant, "path": str(directory)}, seed=card.get("seed"))
    atomic_write_json(run.path / "card.json", card)
    run.write_table("iv_transfer", iv_transfer_table(card))
    run.finish()
    return run.path


def step_eval(ctx: MainContext) -> str:
    """IA and accuracy of base / SFT / DPO on both tasks, held-out and training queries."""
    from .api import run_eval
    from .specs import EvalSpec

    parts = ["## Instruction following (ivlens eval)\n"]
    for task in TASKS:
        for split in ("heldout", "train"):
            spec = EvalSpec(models=ctx.model_names, task=task, split=split, samples=ctx.samples)
            run, summary, decides = run_eval(spec, models=ctx.models, out=ctx.root / "eval" / f"{task}-{split}",
                                             progress=progress_bar)
            table = summary.pivot_table(index=["subtask", "condition"], columns="model",
                                        values="accuracy", sort=False).reset_index()
            ia = summary.pivot_table(index=["subtask", "condition"], columns="model", values="ia",
                                     sort=False).reset_index()
            console.print(frame_table(table, title=f"accuracy: {task}, {split} queries"))
            console.print(frame_table(ia, title=f"IA (answer in the subtask's label space): {task}, {split}"))
            parts.append(f"### {task}, {split} queries ({run.path})\n\naccuracy\n\n{markdown_table(table)}\n\nIA\n\n{markdown_table(ia)}\n")
            if not decides.empty:
                console.print(frame_table(decides, title=f"the instruction decides: {task}, {split}"))
                parts.append(f"the instruction decides (both subtasks right)\n\n{markdown_table(decides)}\n")
    return "\n".join(parts)


def step_probe(ctx: MainContext) -> str:
    """``ivlens probe --model organism-{base,sft,dpo} --tasks adjectives,animals --layers all``: are the IVs of
    rephrased instructions linearly separable, and do probes generalise to phrasings kept out of training?"""
    from .api import run_probe
    from .specs import ProbeSpec

    spec = ProbeSpec(models=ctx.model_names, tasks=TASKS, layers="all", varying="instructions")
    res = run_probe(spec, models=ctx.models, out=ctx.root / "probe")
    acc = res.accuracy[res.accuracy["probe"] == "all"]
    cols = [c for c in ("cv_mean", "heldout_acc", "shuffled_mean", "majority") if c in acc.columns]
    table = acc.pivot_table(index="layer", columns="model", values=cols[0], sort=False).reset_index()
    console.print(frame_table(table, title=f"probe accuracy by layer ({cols[0]}, all four subtasks)"))
    parts = [f"## Linear probes on instruction vectors ({res.run.path})\n",
             "`ivlens probe --model organism-base --model organism-sft --model organism-dpo "
             "--tasks adjectives,animals --layers all`\n",
             f"{cols[0]} (stratified 5-fold CV; four subtasks, 200 rephrasings each)\n", markdown_table(table), ""]
    for col in cols[1:]:
        t = acc.pivot_table(index="layer", columns="model", values=col, sort=False).reset_index()
        parts += [f"{col}\n", markdown_table(t), ""]
    parts.append(f"Figures: {res.run.path / 'figures'}\n")
    return "\n".join(parts)


def step_trace(ctx: MainContext) -> str:
    """``ivlens trace --compare`` on both tasks: do the two subtasks' exact path graphs share early layers and
    part in later ones, compared with two rephrasings of the same instruction?"""
    from .api import run_trace
    from .specs import TraceSpec

    n = min(ctx.samples or 20, 20)
    parts = ["## Circuit selectors: exact path graphs of instruction A vs B\n"]
    for task in TASKS:
        spec = TraceSpec(models=ctx.model_names, task=task, compare=True, samples=n, split="heldout")
        res = run_trace(spec, models=ctx.models, out=ctx.root / "trace" / task, progress=progress_bar)
        run = res.run
        rows = []
        for name, s in res.summaries.items():
            wj = s["weighted_jaccard"]
            rows.append({"model": name, "jaccard A vs B": wj["ab"].get("mean", float("nan")),
                         "jaccard rephrasings": wj["baseline"].get("mean", float("nan")),
                         "part layer": s["part_layer"], "max completeness err": s["completeness_max_rel_err"]})
        table = pd.DataFrame(rows)
        console.print(frame_table(table, title=f"circuit selectors: {task} ({n} held-out queries)"))
        parts += [f"### {task} ({run.path})\n",
                  f"`ivlens trace --model organism-base --model organism-sft --model organism-dpo --task {task} "
                  f"--compare --samples {n} --split heldout`\n", markdown_table(table), ""]
    return "\n".join(parts)


#: The main job's steps, in order. Each analysis adds its step here when it lands.
STEPS: list[tuple[str, Callable[[MainContext], str]]] = [
    ("organism", step_organism),
    ("eval", step_eval),
    ("patch", step_patch),
    ("probe", step_probe),
    ("trace", step_trace),
]


def run_main_job(out: str | Path | None = None, samples: int | None = None, variant: str = "gist") -> Path:
    """Run every step on the organisms; returns the parent results directory."""
    from .api import run_organism
    from .specs import OrganismSpec

    t0 = time.perf_counter()
    root = Path(out) if out else Path("runs") / f"{_dt.datetime.now():%Y%m%d-%H%M%S}-main-organisms"
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    from .organism.paths import is_built, organism_dir

    if not is_built(organism_dir(variant)):
        console.print(f"[bold]building the {variant} model organisms[/] into {organism_dir(variant)} "
                      "(first run only; about 5 minutes on 2 CPU cores)")
    run_organism(OrganismSpec(variant=variant), out=organism_dir(variant))
    prefix = "organism" if variant == "gist" else f"organism-{variant}"
    names = tuple(f"{prefix}-{stage}" for stage in STAGES)
    models = [load_model(name) for name in names]
    for m, stage in zip(models, STAGES, strict=True):
        m.name = stage
    ctx = MainContext(root, models, samples, model_names=names, variant=variant)
    sections = [f"# ivlens main job: {variant} model organisms (base / SFT / DPO)\n"]
    for name, step in STEPS:
        t = time.perf_counter()
        console.rule(f"[bold]{name}")
        sections.append(step(ctx))
        log.info("step %s took %.1f s", name, time.perf_counter() - t)
        atomic_write_text(root / "summary.md", "\n".join(sections))
    sections.append(f"\n_total wall time of the analyses: {time.perf_counter() - t0:.0f} s_\n")
    t = time.perf_counter()
    console.rule("[bold]report")
    from .report import build_report

    report = build_report(root)
    log.info("report took %.1f s", time.perf_counter() - t)
    sections.append(f"The HTML report (figures, tables, setup): {report.name} ({time.perf_counter() - t:.0f} s)\n")
    atomic_write_text(root / "summary.md", "\n".join(sections))
    return root
