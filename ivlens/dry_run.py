"""``--dry-run``'s printing floor: this device's measured rates (:func:`measure_rates`), the cost estimates printed
with their time on it (:func:`print_costs`; ``--remote``: :func:`print_remote_costs`), and the organism build's time
here (:func:`organism_build_seconds`, which the build and the main job print before they start one).

Each analysis's cost estimate lives in its package (``ivlens.<analysis>.dry_run``: patching, steering, probing,
tracing, eval, organism; ``ivlens/analyses/<name>/cost.py`` for the analyses added through the registry), and the
registry (:data:`ivlens.analyses.ANALYSES`) points each analysis at it: each mirrors its command's choices (samples,
prompts, positions, layer sets, batch sizes) and returns one cost estimate per model. The maths on counts is in
:mod:`ivlens.estimate` (``flops``, ``costs``, ``calibrate``, ``model``), which knows nothing above it. Every command
given ``--dry-run`` prints its cost estimates through :func:`ivlens.cli.common.print_dry_run` (then exits 0), and
``ivlens run --dry-run`` prints each step's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from rich.console import Console

from ivlens.estimate.calibrate import (
    copy_rate,
    gemm_rate,
    layer_latency,
    machine_load,
    model_gemm_shapes,
    op_latency,
)
from ivlens.estimate.costs import CostEstimate, Rates, seconds
from ivlens.estimate.flops import ModelShape
from ivlens.organism.dry_run import organism_costs, organism_recipe_info, organism_shape


def organism_build_seconds(size: str = "small", variant: str = "gist", measure: bool = True,
                           threads: int = 2) -> float:
    """The dry run's estimate of ``ivlens organism build``'s wall time on this machine as it is loaded now
    (:func:`organism_costs` with its timed steps at this machine's rates): what the build and the main job print
    before they start one. Takes about 3.3 s here (3.9–4.7 s when it timed one thread)."""
    cost = organism_costs(size, variant, measure, threads=threads)[0]
    shape = organism_shape(size)
    rates, _ = measure_rates(shape, "cpu", "float32", organism_recipe_info("organism", size).config)
    return seconds(cost, dataclasses.replace(rates, threads=threads))

# --------------------------------------------------------------------------------------------- printing
def measure_rates(shape: ModelShape, device: str = "cpu", dtype: str = "float32",
                  config=None) -> tuple[Rates, str | None]:
    """This device's rates on ``shape``'s matrices (per CPU-second of one thread on a CPU, with the machine's load);
    falls back to the CPU (with a note) when ``device`` is not available here."""
    note = None
    dev = "cpu" if device == "auto" else device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        note = f"--device {device} is not available on this machine: timed on the CPU instead"
        dev = "cpu"
    rate = gemm_rate(model_gemm_shapes(shape), dev, dtype)
    cores, others = machine_load() if dev == "cpu" else (0, 0.0)
    if config is None:  # an OLMo-2 layer stands in
        from transformers import AutoConfig

        config = AutoConfig.for_model("olmo2")
    lat = layer_latency(config, dev, dtype)
    return Rates(rate, op_latency(dev, dtype), copy_rate(dev), lat, dev, dtype,
                 threads=torch.get_num_threads(), cores=cores, others=others), note


# --------------------------------------------------------------------------------------------- printing
def human_time(s: float) -> str:
    for unit, n in (("days", 86400), ("h", 3600), ("min", 60)):
        if s >= 2 * n:
            return f"{s / n:.1f} {unit}"
    return f"{s:.1f} s"


def gigabytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def print_costs(costs: Sequence[CostEstimate], shapes: Sequence[ModelShape], device: str = "cpu",
                dtype: str = "float32", together: bool = False, console: Console | None = None,
                configs: Sequence | None = None, remote: bool = False) -> dict:
    """Print every cost estimate (counts, FLOPs, peak memory, time on ``device``) and, for several, the total;
    returns the same figures as a dict. ``together``: the command loads all its models at once (patch, trace, eval),
    so the peak holds every model's weights; otherwise (probe) one model at a time. ``remote``: the compute runs on
    NDIF (:func:`print_remote_costs`)."""
    console = console or Console(soft_wrap=True)
    if remote:
        return print_remote_costs(costs, shapes, console)
    out: dict = {"costs": [], "device": device, "dtype": dtype}
    total_s = 0.0
    for i, (p, shape) in enumerate(zip(costs, shapes, strict=True)):
        rates, note = measure_rates(shape, device, dtype, configs[i] if configs else None)
        if p.threads:
            rates = dataclasses.replace(rates, threads=p.threads)
        sec = seconds(p, rates)
        total_s += sec
        d = p.to_dict(rates)
        d["rates"] = {"gemm_flops_per_s": rates.gemm, "op_latency_s": rates.op_latency,
                      "copy_bytes_per_s": rates.copy, "layer_latency_s": rates.layer_latency, "device": rates.device, "threads": rates.threads,
                      "cores": rates.cores, "others": rates.others}
        out["costs"].append(d)
        console.print(f"[bold]dry run: {p.command}[/] · {p.model} ({shape.arch}, {shape.n_layers} layers, d_model "
                      f"{shape.d_model}, {shape.n_params / 1e9:.3g} B parameters, {dtype})", highlight=False)
        console.print("  " + " · ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in p.counts.items()), highlight=False)
        console.print(f"  FLOPs {p.flops:.3g} · peak memory ≈ {gigabytes(p.peak_bytes)} ("
                      + ", ".join(f"{k} {gigabytes(v)}" for k, v in p.memory.items()) + ")", highlight=False)
        share = (f"; {rates.parallel_cores():.2g} of {rates.cores} cores free for its {rates.threads} threads "
                 f"(load {rates.others:.1f})" if rates.cores else "")
        idle = ""
        if rates.cores and rates.others + rates.threads > rates.cores:
            idle_s = seconds(p, dataclasses.replace(rates, others=0.0))
            idle = f" now, ≈ {human_time(idle_s)} with the machine to itself"
            d["idle_seconds"] = idle_s
        per = " per CPU-second of one thread" if rates.cores else "/s"
        console.print(f"  time ≈ {human_time(sec)}{idle} on {rates.device} (measured here: GEMM {rates.gemm / 1e9:.1f} "
                      f"GFLOP{per} on the model's shapes, {rates.layer_latency * 1e3:.2f} ms per layer call, "
                      f"{rates.op_latency * 1e6:.1f} µs per small kernel, {rates.copy / 1e9:.1f} GB{per} "
                      f"copied{share})", highlight=False)
        for n in ([note] if note else []) + p.notes:
            console.print(f"  note: {n}", highlight=False)
        if not p.fits:
            console.print("  [bold red]does not fit the memory budget[/]")
    peak = max(p.peak_bytes for p in costs)
    if together and len(costs) > 1:
        peak += sum(p.memory.get("weights", 0) for p in costs) - max(p.memory.get("weights", 0) for p in costs)
    idle_total = sum(d.get("idle_seconds", d["seconds"]) for d in out["costs"])
    if len(costs) > 1:
        how = "all models loaded together" if together else "models loaded one after another"
        idle = f" now, ≈ {human_time(idle_total)} with the machine to itself" if idle_total < total_s else ""
        console.print(f"[bold]total[/]: time ≈ {human_time(total_s)}{idle}, peak memory ≈ {gigabytes(peak)} ({how})",
                      highlight=False)
    out["total_seconds"], out["idle_seconds"], out["peak_bytes"] = total_s, idle_total, peak
    return out


def print_remote_costs(costs: Sequence[CostEstimate], shapes: Sequence[ModelShape], console: Console) -> dict:
    """``--remote``: the work each cost estimate sends to NDIF (rows, forward passes), and no local memory or time:
    the
    compute runs on NDIF's GPUs, whose speed and queue this machine cannot measure."""
    out: dict = {"costs": [], "remote": "ndif", "total_seconds": 0.0, "idle_seconds": 0.0, "peak_bytes": 0}
    for p, shape in zip(costs, shapes, strict=True):
        console.print(f"[bold]dry run: {p.command}[/] · {p.model} ({shape.arch}, {shape.n_layers} layers, d_model "
                      f"{shape.d_model}, {shape.n_params / 1e9:.3g} B parameters) on NDIF", highlight=False)
        counts = dict(p.counts)
        if p.command.startswith("patch"):  # no trie sharing on NDIF: every row is one whole forward
            counts = {k: counts[k] for k in ("samples", "rows", "layer_sets") if k in counts}
            counts["forward_passes"] = counts.get("rows", 0) + 2 * counts.get("samples", 0) + 1
        console.print("  " + " · ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in counts.items()), highlight=False)
        console.print("  note: --remote: the compute runs on NDIF, so no local memory or time estimate applies (only "
                      "the model's config and tokenizer are read here)", highlight=False)
        out["costs"].append({"command": p.command, "model": p.model, "counts": counts, "flops": p.flops,
                             "remote": "ndif"})
    return out

