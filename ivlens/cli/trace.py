"""``ivlens trace``: a thin typer wrapper over :func:`ivlens.api.run_trace` (register with
``app.command("trace")(trace)``)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import typer

from ivlens.cli.common import checked_spec, console, friendly_errors, progress_bar, shard_written
from ivlens.cli.generated import spec_command
from ivlens.tracing.spec import TraceSpec


@spec_command(TraceSpec)
def trace(ctx: typer.Context, options: dict[str, Any], *, out, resume, dry_run) -> None:
    """Exact path tracing: the answer's logit decomposed into paths (token → heads/MLPs → answer) under the
    frozen linear surrogate; or (--compare) the two subtasks' graphs compared layer by layer."""
    from ivlens.api import run_trace

    spec = checked_spec(ctx, TraceSpec, options, resume=resume, out=out, dry_run=dry_run)
    if spec is None:
        return
    with friendly_errors():
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
