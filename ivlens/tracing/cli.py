"""``ivlens trace``: a thin typer wrapper over :mod:`ivlens.tracing` (register with ``app.command("trace")(trace)``)."""

from __future__ import annotations

from typing import Annotated

import typer

from ivlens.cli_common import (
    DeviceOpt,
    DtypeOpt,
    FormatOpt,
    GgufOpt,
    ModelOpt,
    OutOpt,
    RevisionOpt,
    SeedOpt,
    TrustOpt,
    console,
    friendly_errors,
    load_models,
    progress_bar,
)


def trace(
    model: ModelOpt,
    task: Annotated[str | None, typer.Option("--task", "-t", help="built-in task or YAML spec (with --sample/--compare)")] = None,
    subtask: Annotated[str | None, typer.Option("--subtask", "-s", help="subtask whose instruction and answer to trace")] = None,
    sample: Annotated[int | None, typer.Option("--sample", help="index of the task sample to trace")] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", help="trace this text instead of a task sample")] = None,
    target: Annotated[str | None, typer.Option("--target", help="answer label (default: the task's answer, or the model's top token)")] = None,
    method: Annotated[str, typer.Option("--method", help="exact | argmax (the paper's tracer, with its error)")] = "exact",
    compare: Annotated[bool, typer.Option("--compare", help="circuit selectors: instruction A vs B over samples")] = False,
    samples: Annotated[int | None, typer.Option("--samples", "-n", help="--compare: number of samples (default 50)")] = 50,
    split: Annotated[str, typer.Option("--split", help="organisms: heldout | train | all queries")] = "all",
    top_k: Annotated[int, typer.Option("--top-k", help="paths to report (and edges for top-k overlap)")] = 20,
    beam: Annotated[int, typer.Option("--beam", help="beam width of the path search")] = 256,
    threshold_rank: Annotated[int, typer.Option("--threshold-rank", help="argmax: keep paths ranking the answer below this")] = 10,
    start_pos: Annotated[int | None, typer.Option("--start-pos", help="first source position of the paths (negative from the end)")] = None,
    end_pos: Annotated[int | None, typer.Option("--end-pos", help="last source position of the paths (inclusive)")] = None,
    from_inst: Annotated[bool, typer.Option("--from-inst", help="sources = T_inst (task prompts): paths leaving the instruction")] = False,
    fmt: FormatOpt = "raw",
    seed: SeedOpt = 0,
    out: OutOpt = None,
    gguf_file: GgufOpt = None,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "cpu",
    revision: RevisionOpt = None,
    trust_remote_code: TrustOpt = False,
) -> None:
    """Exact path tracing: the answer's logit decomposed into paths (token → heads/MLPs → answer) under the
    frozen linear surrogate; or (--compare) the two subtasks' graphs compared layer by layer."""
    from ivlens.runs import RunDir

    with friendly_errors():
        if compare and task is None:
            raise typer.BadParameter("--compare needs --task")
        if not compare and (prompt is None) == (task is None):
            raise typer.BadParameter("give either --prompt TEXT or --task T (with --sample i)")
        lms = load_models(model, gguf_file, dtype, device, revision, trust_remote_code)
        name = task or "prompt"
        run = RunDir.create("trace", f"{name}-compare" if compare else name, out=out, task=task, seed=seed,
                            models=[m.describe() for m in lms],
                            args={"subtask": subtask, "sample": sample, "prompt": prompt, "method": method,
                                  "compare": compare, "samples": samples, "split": split, "top_k": top_k,
                                  "beam": beam, "threshold_rank": threshold_rank, "start_pos": start_pos,
                                  "end_pos": end_pos, "from_inst": from_inst, "format": fmt})
        if compare:
            from ivlens.tracing.run import compare_run

            summaries = compare_run(lms, task, run, samples=samples, split=split, seed=seed, fmt=fmt, top_k=top_k,
                                    beam=beam, progress=progress_bar)
            for name, s in summaries.items():
                wj = s["weighted_jaccard"]
                console.print(f"[bold]{name}[/]: weighted Jaccard A vs B {wj['ab'].get('mean', float('nan')):.3f}, "
                              f"rephrasings {wj['baseline'].get('mean', float('nan')):.3f}; parts at layer "
                              f"{s['part_layer']}; completeness error ≤ {s['completeness_max_rel_err']:.1e}")
            run.finish(summary=summaries)
        else:
            for lm in lms:
                _single(lm, task, subtask, sample, prompt, target, method, top_k, beam, threshold_rank,
                        start_pos, end_pos, from_inst, fmt, run)
            run.finish()
    console.print(f"results: {run.path}")


def _single(lm, task, subtask, sample, prompt, target, method, top_k, beam, threshold_rank, start_pos, end_pos,
            from_inst, fmt, run) -> None:
    from rich.table import Table

    from ivlens.tracing import trace_prompt, write_trace

    ids, t_inst = None, None
    if task is not None:
        from ivlens.tasks import instructed_prompt, label_token_ids, load_task

        t = load_task(task)
        sub = t.subtask(subtask)
        smp = t.samples[sample or 0]
        p = instructed_prompt(lm.tokenizer, t, smp, sub.instruction, fmt)
        ids, t_inst = list(p.input_ids), p.t_inst
        if target is None:
            target = label_token_ids(lm.tokenizer, p, smp.answer(sub.name))[0]
    if from_inst:
        if t_inst is None:
            raise typer.BadParameter("--from-inst needs a task prompt with an instruction")
        start_pos = end_pos = t_inst
    with console.status(f"tracing with {lm.name}"):
        res = trace_prompt(lm.model, lm.tokenizer, ids if ids is not None else prompt, target=target, method=method,
                           top_k=top_k, beam=beam, threshold_rank=threshold_rank, start_pos=start_pos,
                           end_pos=end_pos)
    write_trace(res, run.path, name=_slug(lm.name))
    tok = res.sur.tokens
    console.print(f"[bold]{lm.name}[/]: target {res.target.coef} at position {res.full_graph.target_pos}: "
                  f"Σ paths = {res.full_graph.value:.6g}, model = {res.full_graph.real:.6g} "
                  f"(completeness error {res.full_graph.completeness_rel_err:.2e})"
                  + (f"; T_inst = {t_inst}" if t_inst is not None else ""))
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


def _slug(name: str) -> str:
    from ivlens.tracing.run import slug

    return slug(name)
