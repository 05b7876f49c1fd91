"""``ivlens trace``: a thin typer wrapper over :mod:`ivlens.tracing` (register with ``app.command("trace")(trace)``)."""

from __future__ import annotations

from typing import Annotated

import typer

from ivlens.cli_common import (
    DeviceOpt,
    DryRunOpt,
    DtypeOpt,
    FormatOpt,
    GgufOpt,
    MemoryBudgetOpt,
    ModelOpt,
    OutOpt,
    RevisionOpt,
    SeedOpt,
    TrustOpt,
    console,
    err_console,
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
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="trace only the last N tokens of the prompt "
                                                   "(the graph costs L·H·T²)")] = None,
    fmt: FormatOpt = "raw",
    seed: SeedOpt = 0,
    out: OutOpt = None,
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
    from ivlens.runs import RunDir

    with friendly_errors():
        if compare and task is None:
            raise typer.BadParameter("--compare needs --task")
        if not compare and (prompt is None) == (task is None):
            raise typer.BadParameter("give either --prompt TEXT or --task T (with --sample i)")
        if compare and max_tokens is not None:
            raise typer.BadParameter("--max-tokens cuts one traced prompt; --compare traces whole task prompts")
        if dry_run:
            from ivlens.dry_run import trace_dry_run

            trace_dry_run(model, task=task, subtask=subtask, sample=sample, prompt=prompt, compare=compare,
                          samples=samples, fmt=fmt, beam=beam, max_tokens=max_tokens, seed=seed, dtype=dtype,
                          device=device, memory_budget=memory_budget, gguf_file=gguf_file, revision=revision,
                          trust_remote_code=trust_remote_code)
            return
        lms = load_models(model, gguf_file, dtype, device, revision, trust_remote_code)
        for lm in lms:  # say what the graph costs before building it; refuse when it will not fit
            _check_memory(lm, task, subtask, sample, prompt, compare, samples, seed, fmt, beam, max_tokens, dtype,
                          device, memory_budget)
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
                        start_pos, end_pos, from_inst, fmt, run, max_tokens)
            run.finish()
    console.print(f"results: {run.path}")


def _check_memory(lm, task, subtask, sample, prompt, compare, samples, seed, fmt, beam, max_tokens, dtype, device,
                  memory_budget) -> None:
    """Exit with one message when tracing ``lm``'s longest prompt would not fit the memory budget."""
    import logging

    from ivlens.dry_run import trace_budget, trace_plans, trace_refusal
    from ivlens.estimate.flops import ModelShape
    from ivlens.estimate.model import ModelInfo

    shape = ModelShape.from_config(lm.model.config)
    info = ModelInfo(lm.name, str(lm.path), shape, lm.tokenizer)
    plan = trace_plans([], task=task, subtask=subtask, sample=sample, prompt=prompt, compare=compare,
                       samples=samples, fmt=fmt, beam=beam, max_tokens=max_tokens, seed=seed, dtype=dtype,
                       infos=[info])[0]
    n = plan.counts["max_tokens"]
    mode = "compare" if compare else "single"
    budget = trace_budget(memory_budget, device)  # weights are loaded: available memory already excludes them
    logging.getLogger(__name__).info("%s: tracing up to %d tokens needs about %.2f GB (graph %.2f GB)", lm.name, n,
                                     plan.peak_bytes / 1e9, plan.memory["graph (L·H·T² tensors)"] / 1e9)
    msg = trace_refusal(shape, n, budget, dtype, beam, mode)
    if msg is not None:
        err_console.print(f"[bold red]error:[/] {lm.name}: {msg}")
        raise typer.Exit(2)


def _single(lm, task, subtask, sample, prompt, target, method, top_k, beam, threshold_rank, start_pos, end_pos,
            from_inst, fmt, run, max_tokens=None) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ivlens.tracing import trace_prompt, traced_token_line, write_trace

    ids, t_inst, note = None, None, None
    if isinstance(target, str):
        note = traced_token_line(lm.tokenizer, target, lm.tokenizer(target, add_special_tokens=False)["input_ids"])
    if task is not None:
        from ivlens.tasks import instructed_prompt, label_token_ids, load_task

        t = load_task(task)
        sub = t.subtask(subtask)
        smp = t.samples[sample or 0]
        p = instructed_prompt(lm.tokenizer, t, smp, sub.instruction, fmt)
        ids, t_inst = list(p.input_ids), p.t_inst
        if target is None:
            answer_ids = label_token_ids(lm.tokenizer, p, smp.answer(sub.name))
            note = traced_token_line(lm.tokenizer, smp.answer(sub.name), answer_ids)
            target = answer_ids[0]
    if note is not None:
        console.print(escape(note), highlight=False)
    if max_tokens is not None:
        if ids is None:
            ids = list(lm.tokenizer(prompt)["input_ids"])
        cut = max(0, len(ids) - max_tokens)
        if cut:
            console.print(f"--max-tokens {max_tokens}: tracing the last {max_tokens} of {len(ids)} tokens")
            ids = ids[cut:]
            t_inst = None if t_inst is None or t_inst < cut else t_inst - cut
    if from_inst:
        if t_inst is None:
            raise typer.BadParameter("--from-inst needs a task prompt with an instruction (inside --max-tokens)")
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
