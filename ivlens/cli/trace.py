"""``ivlens trace``: a thin typer wrapper over :func:`ivlens.api.run_trace` (register with
``app.command("trace")(trace)``)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Annotated

import typer

from ivlens.cli.common import (
    DeviceOpt,
    DryRunOpt,
    DtypeOpt,
    FormatOpt,
    GgufOpt,
    MemoryBudgetOpt,
    ModelOpt,
    OutOpt,
    ResumeOpt,
    RevisionOpt,
    SeedOpt,
    ShardOpt,
    SplitOpt,
    TrustOpt,
    build_spec,
    console,
    friendly_errors,
    progress_bar,
    shard_written,
)
from ivlens.runs import check_out_dir
from ivlens.specs import Correction, TraceMethod


def trace(
    ctx: typer.Context,
    model: ModelOpt = None,
    task: Annotated[str | None, typer.Option("--task", "-t", help="built-in task or YAML spec (with --sample/--compare)")] = None,
    subtask: Annotated[str | None, typer.Option("--subtask", "-s", help="subtask whose instruction and answer to trace")] = None,
    sample: Annotated[int | None, typer.Option("--sample", help="index of the task sample to trace")] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", help="trace this text instead of a task sample")] = None,
    target: Annotated[str | None, typer.Option("--target", help="answer label (default: the task's answer, or the model's top token)")] = None,
    method: Annotated[TraceMethod, typer.Option("--method", help="exact, or argmax (the paper's tracer, with its error)")] = "exact",
    compare: Annotated[bool, typer.Option("--compare", help="circuit selectors: instruction A vs B over samples")] = False,
    samples: Annotated[int | None, typer.Option("--samples", "-n", help="--compare: number of samples (default 50)")] = 50,
    split: SplitOpt = "all",
    top_k: Annotated[int, typer.Option("--top-k", help="paths to report (and edges for top-k overlap)")] = 20,
    beam: Annotated[int, typer.Option("--beam", help="beam width of the path search")] = 256,
    threshold_rank: Annotated[int, typer.Option("--threshold-rank", help="argmax: keep paths ranking the answer below this")] = 10,
    start_pos: Annotated[int | None, typer.Option("--start-pos", help="first source position of the paths (negative from the end)")] = None,
    end_pos: Annotated[int | None, typer.Option("--end-pos", help="last source position of the paths (inclusive)")] = None,
    from_inst: Annotated[bool, typer.Option("--from-inst", help="sources = T_inst (task prompts): paths leaving the instruction")] = False,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="trace only the last N tokens of the prompt "
                                                   "(the graph costs L·H·T²)")] = None,
    readout: Annotated[str | None, typer.Option("--readout", help="trace w · resid_l[t] instead of a logit: "
                                                "probe:RUN_DIR:LAYER[:CLASS], means:RUN_DIR:LAYER[:A-B], "
                                                "lda:RUN_DIR:LAYER ([@MODEL]), or vector:FILE.npy|.safetensors:LAYER")] = None,
    position: Annotated[str | None, typer.Option("--position", help="where --readout is read: t_inst, last "
                                                 "(default) or a token index")] = None,
    base: Annotated[str | None, typer.Option("--base", help="--compare: the base model the others' selectivity is "
                                             "compared with (default: a model named base)")] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="--compare: significance level of the selectivity "
                                         "verdicts, after correction over layers")] = 0.05,
    correction: Annotated[Correction, typer.Option("--correction", help="--compare: multiple-comparison "
                                                   "correction over layers")] = "holm",
    fmt: FormatOpt = "raw",
    seed: SeedOpt = 0,
    out: OutOpt = None,
    resume: ResumeOpt = None,
    shard: ShardOpt = None,
    gguf_file: GgufOpt = None,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "cpu",
    revision: RevisionOpt = None,
    trust_remote_code: TrustOpt = False,
    memory_budget: MemoryBudgetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Exact path tracing: the answer's logit decomposed into paths (token → heads/MLPs → answer) under the
    frozen linear surrogate; or (--compare) the two subtasks' graphs compared layer by layer."""
    from ivlens.api import run_trace
    from ivlens.tracing import TraceSpec

    options = {"models": tuple(model or ()), "task": task, "subtask": subtask, "sample": sample, "prompt": prompt,
               "target": target, "method": method, "compare": compare, "samples": samples, "split": split,
               "top_k": top_k, "beam": beam, "threshold_rank": threshold_rank, "start_pos": start_pos,
               "end_pos": end_pos, "from_inst": from_inst, "max_tokens": max_tokens, "format": fmt, "seed": seed,
               "gguf_file": gguf_file, "dtype": dtype, "device": device, "revision": revision,
               "trust_remote_code": trust_remote_code, "memory_budget": memory_budget, "shard": shard,
               "readout": readout, "position": position, "base": base, "alpha": alpha, "correction": correction}
    with friendly_errors():
        spec = build_spec(ctx, TraceSpec, options, resume, params={"models": "model", "format": "fmt"})
        check_out_dir(out)  # a dry run refuses what the run would
        if dry_run:
            from ivlens.cli.common import print_dry_run

            print_dry_run(spec)
            return
        with console.status("tracing") if not spec.compare else nullcontext():
            res = run_trace(spec, out=out, resume=resume, progress=progress_bar if spec.compare else None)
    if spec.shard is not None:
        return shard_written(res.run.path, spec.shard)
    if res.summaries is not None:
        from rich.markup import escape

        for name, s in res.summaries.items():
            wj = s["weighted_jaccard"]
            console.print(f"[bold]{name}[/]: weighted Jaccard A vs B {wj['ab'].get('mean', float('nan')):.3f}, "
                          f"same instruction reworded {wj['baseline'].get('mean', float('nan')):.3f}; "
                          f"completeness error ≤ {s['completeness_max_rel_err']:.1e}")
        for s in res.summaries.values():
            if "selectivity" in s:
                console.print(escape(s["selectivity"]["sentence"]), highlight=False)
        if len(res.summaries) > 1 and not any((s.get("selectivity") or {}).get("base") for s in
                                              res.summaries.values()):
            console.print("no base model (--base NAME): no difference in differences against it")
    for tr in res.traces or []:
        _print_trace(tr, spec.max_tokens)
    console.print(f"results: {res.run.path}")


def _print_trace(tr, max_tokens: int | None) -> None:
    """One model's traced prompt: the target, completeness, the soft cap if any, the top paths, argmax stats."""
    from rich.markup import escape
    from rich.table import Table

    res = tr.result
    if tr.note is not None:
        console.print(escape(tr.note), highlight=False)
    if tr.cut:
        console.print(f"--max-tokens {max_tokens}: traced the last {max_tokens} of {tr.cut + max_tokens} tokens")
    tok = res.sur.tokens
    what = (f"read-out {tr.readout['name']} (resid after block {res.target.layer})" if tr.readout is not None
            else f"target {res.target.coef}")
    console.print(f"[bold]{tr.model}[/]: {escape(what)} at position {res.full_graph.target_pos}: "
                  f"Σ paths = {res.full_graph.value:.6g}, model = {res.full_graph.real:.6g} "
                  f"(completeness error {res.full_graph.completeness_rel_err:.2e})"
                  + (f"; T_inst = {tr.t_inst}" if tr.t_inst is not None else ""))
    cap = res.full_graph.target_info["softcap"]
    if cap is not None:
        console.print(f"target: the model's soft-capped logit {cap['cap']:g}·tanh(z/{cap['cap']:g}) = s·z, slope s frozen "
                      "per token: " + ", ".join(f"token {k}: z = {z:.4g}, s = {s:.4g}" for k, _, z, s in cap["tokens"]))
    table = Table(title=f"top {len(res.paths)} exact paths", show_lines=False)
    table.add_column("contribution", justify="right")
    table.add_column("path")
    for p in res.paths:
        table.add_row(f"{p.value:+.4g}", p.describe(tok).rsplit("  (", 1)[0])
    console.print(table)
    if res.argmax is not None:
        a = res.argmax
        console.print(f"argmax tracer: {len(a.paths)}/{a.n_enumerated} paths rank the answer < {a.threshold_rank}; "
                      f"summed logit vectors vs real logits: cosine {a.cosine:.3f}, norm ratio {a.norm_ratio:.3f} "
                      f"(all enumerated paths: {a.cosine_all:.3f}, {a.norm_ratio_all:.3f})")
