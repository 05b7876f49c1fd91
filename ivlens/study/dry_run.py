"""``ivlens run STUDY.yaml --dry-run``: every step's cost estimate (rows, forward passes, peak memory, time) from the
models' configs alone, then one line per step and the study's total.

Each model is sized from its study ``config`` directory when given (a hub checkpoint estimated with no weights),
else from the model itself (its ``config.json`` and tokenizer; an organism not built yet from its recipe). The
cost estimates are the registry's (each analysis's ``dry_run`` module, :func:`ivlens.analyses.spec_costs`), printed by
:mod:`ivlens.dry_run`: the ones each command's own ``--dry-run`` prints.
"""

from __future__ import annotations

import dataclasses

from rich.console import Console
from rich.table import Table

from ivlens.analyses import BY_NAME, organism_step_reuses, spec_costs
from ivlens.dry_run import gigabytes, human_time, print_costs
from ivlens.estimate.costs import CostEstimate
from ivlens.estimate.model import ModelInfo, check_adapter, model_info
from ivlens.organism.dry_run import organism_recipe_info, organism_shape
from ivlens.organism.paths import is_built, organism_dir, parse_organism_name

from .plan import Step, plan_steps
from .spec import StudySpec


def _info(name: str, require_adapter: bool, cache: dict) -> ModelInfo:
    """``name``'s sizes, read once per dry run whichever steps need it (a GGUF header takes seconds to parse)."""
    if name not in cache:
        parsed = parse_organism_name(name)
        if parsed is not None and not is_built(organism_dir(parsed[0])):
            cache[name] = organism_recipe_info(name)
        else:
            cache[name] = model_info(name)
    if require_adapter:
        check_adapter(cache[name])
    return cache[name]


def step_infos(step: Step, cache: dict) -> list[ModelInfo]:
    """The sizes of a step's models, each named by its study label."""
    need = BY_NAME[step.analysis].needs_adapter  # checked from the config in a dry run
    return [dataclasses.replace(_info(path, need, cache), name=label)
            for path, label in zip(step.sizing, step.labels, strict=True)]


def model_sizes(study: StudySpec, steps: list[Step] | None = None) -> list[int]:
    """The parameter count of each distinct model the steps (default: the study's) load, from configs alone."""
    cache: dict = {}
    sizes: dict[str, int] = {}
    for step in plan_steps(study) if steps is None else steps:
        for path in step.sizing:
            if path not in sizes:
                sizes[path] = _info(path, False, cache).shape.n_params
    return list(sizes.values())


def headline_counts(cost: CostEstimate) -> tuple[int | None, int | None]:
    """``(rows, forward passes)`` of a cost estimate: result rows (patch), prompts (trace, eval) or instructions
    (probe); whole forwards, counting each generation step of eval as one batched forward and each trained sequence."""
    c = cost.counts
    rows = c.get("rows", c.get("prompts", c.get("instructions")))
    forwards = c.get("forward_passes", c.get("generation_steps"))
    if forwards is None and "measure_forwards" in c:  # an organism build: training steps and measurements
        forwards = sum(v for k, v in c.items() if k.endswith("_steps")) + c["measure_forwards"]
    if forwards is None and cost.command.startswith("trace"):
        forwards = c.get("prompts")
    return rows, forwards


#: what the table's total is, printed under it: an upper bound for ``ivlens run`` with workers (the main job's
#: analyses, estimated at 3.2-4.5 min this way, took 1.3-1.6 min on two workers)
TOTAL_MEANS = ("total: the steps one after another, each as its own command (its imports and model loads counted); "
               "where --jobs (auto by default) gives `ivlens run` more than one step at a time, it runs them side by "
               "side in workers that import once and keep their models loaded, and takes less")


def dry_run_study(study: StudySpec, console: Console | None = None) -> dict:
    """Print every step's cost estimates and a table of steps; return ``{"steps": [...], "total_seconds",
    "peak_bytes"}``."""
    console = console or Console(soft_wrap=True)
    steps = plan_steps(study)
    cache: dict = {}
    out = {"steps": [], "total_seconds": 0.0, "peak_bytes": 0}
    for n, step in enumerate(steps, 1):
        console.rule(f"[bold]step {n}/{len(steps)}: {step.rel}[/] (ivlens {step.analysis})")
        if step.analysis == "organism" and organism_step_reuses(step.spec, refuse=True):
            console.print(f"the organisms are built ({organism_dir(step.spec.variant)}): this step reuses them",
                          highlight=False)
            out["steps"].append({"step": step.rel, "analysis": step.analysis, "rows": 0, "forward_passes": 0,
                                 "peak_bytes": 0, "seconds": 0.0})
            continue
        infos = step_infos(step, cache)
        costs, together = spec_costs(step.spec, infos)
        if infos:
            shapes, configs = [i.shape for i in infos], [i.config for i in infos]
        else:  # the organism build
            shapes, configs = [organism_shape(step.spec.size)], None
        printed = print_costs(costs, shapes, step.spec.load_kwargs()["device"] if infos else "cpu",
                              step.spec.load_kwargs()["dtype"] if infos else "float32", together=together,
                              console=console, configs=configs, remote=getattr(step.spec, "remote", False))
        rows = forwards = 0
        for p in costs:
            r, f = headline_counts(p)
            rows, forwards = rows + (r or 0), forwards + (f or 0)
        out["steps"].append({"step": step.rel, "analysis": step.analysis, "rows": rows, "forward_passes": forwards,
                             "peak_bytes": printed["peak_bytes"], "seconds": printed["total_seconds"]})
        out["total_seconds"] += printed["total_seconds"]
        out["peak_bytes"] = max(out["peak_bytes"], printed["peak_bytes"])
    table = Table(title=f"study {study.name}: {len(steps)} steps on {', '.join(study.labels) or 'no model'}")
    for col in ("step", "rows", "forward passes", "peak memory", "time"):
        table.add_column(col, justify="left" if col == "step" else "right")
    for s in out["steps"]:
        table.add_row(s["step"], f"{s['rows']:,}", f"{s['forward_passes']:,}", gigabytes(s["peak_bytes"]),
                      human_time(s["seconds"]))
    table.add_row("[bold]total[/]", "", "", gigabytes(out["peak_bytes"]), human_time(out["total_seconds"]))
    console.print(table)
    console.print(TOTAL_MEANS, highlight=False)
    return out
