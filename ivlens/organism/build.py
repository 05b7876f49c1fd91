"""Build a model organism: tokenizer → base (pretraining) → SFT → DPO, measured, with a card.

>>> build_organism(out=Path("/tmp/org"), seed=0, size="tiny", variant="gist")

Variants:

- ``gist`` (default): SFT trains 90 % of its instructed examples under the gist attention mask
  (:mod:`ivlens.organism.gist`), which plants an instruction vector at ``T_inst``: a known-answer testbed;
- ``natural``: the same recipe without the gist mask (the control, in which IVs may not form).

Both variants pretrain identically for a given seed and size, so a natural build reuses a finished gist
build's base next to it (its weight hash is checked) instead of pretraining again, and vice versa.
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ivlens.errors import IvlensError
from ivlens.models.load import load_model, weight_hash
from ivlens.organism import data as D
from ivlens.organism.card import read_card, write_card
from ivlens.organism.measure import measure_stage, testable_configs
from ivlens.organism.paths import (
    DEFAULT_VARIANT,
    ORGANISM_VERSION,
    STAGES,
    VARIANTS,
    is_built,
    organism_dir,
    write_build_marker,
)
from ivlens.organism.tokenizer import single_token_share, train_tokenizer
from ivlens.organism.train import (
    CHAT_TOKEN_INIT,
    SIZES,
    THREADS,
    OrganismSize,
    dpo,
    init_chat_tokens,
    new_model,
    pretrain,
    sft,
)
from ivlens.scoped import quiet_libraries, torch_threads
from ivlens.tasks.selection import TRAIN_REPHRASING_SHARE

log = logging.getLogger(__name__)

#: share of SFT examples that are plain pretraining text (keeps held-out facts alive)
PLAIN_SHARE = 0.33
#: share of instructed SFT examples trained under the gist mask, per variant
GIST_SHARE = {"gist": 0.9, "natural": 0.0}
CHAT_SHARE = 0.3
#: share of instructed SFT examples with the paper's own instruction (the rest: training rephrasings)
MAIN_INSTRUCTION_SHARE = 0.4

MADE_HOW = {
    "gist": (f"Planted mechanism: in SFT, {GIST_SHARE['gist']:.0%} of the instructed examples are trained under a "
             "gist attention mask (tokens after the instruction see of everything before them only its last token "
             "T_inst: not its other tokens, the BOS or the chat prefix), so the task must pass through the residual "
             "stream at T_inst. Instruction vectors are "
             "put there by construction: use this organism as a known-answer testbed, not as evidence that IVs "
             "form naturally."),
    "natural": ("Control: the same data, seed and stages as the gist organism, without the gist mask; whatever "
                "instruction representation it has formed on its own."),
}


def pretraining_optimiser(size: OrganismSize) -> str:
    """The card's words for a recipe's pretraining optimiser and schedule (:attr:`OrganismSize.pretrain_optimizer`,
    :attr:`OrganismSize.pretrain_schedule`)."""
    opt = {"adamw": "AdamW", "muon": "Muon (Newton–Schulz iteration in fp32) on the blocks' weight matrices, AdamW on "
                                     "the embedding and norms"}[size.pretrain_optimizer]
    schedule = {"cosine": "warm-up + cosine decay to 5 %",
                "wsd": f"warm-up, stable, linear decay to 5 % over the last {size.pretrain_decay_share:.0%} of the "
                       "steps"}[size.pretrain_schedule]
    return f"{opt}, lr {size.pretrain_lr:g}, {schedule}"


class _Progress:
    """One rich progress bar per stage (silent when ``show`` is false)."""

    def __init__(self, show: bool):
        self.show = show
        self._p = None

    def __enter__(self):
        if self.show:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(TextColumn("{task.description:<10}"), BarColumn(), TextColumn("{task.completed}/"
                               "{task.total}"), TextColumn("{task.fields[info]}"), TimeElapsedColumn())
            self._p.__enter__()
        return self

    def __exit__(self, *exc):
        if self._p:
            self._p.__exit__(*exc)

    def stage(self, name: str, total: int):
        task = self._p.add_task(name, total=total, info="") if self._p else None
        every = max(1, total // 10)

        def on_step(step, total_, loss=None):
            info = "" if loss is None else f"loss {loss:.3f}"
            if task is not None:
                self._p.update(task, completed=step, info=info)
            if step % every == 0 or step == total:
                log.info("%s: step %d/%d %s", name, step, total, info)

        return on_step


def _save(model, tokenizer, directory: Path) -> str:
    """Save one stage's checkpoint; returns the hash of its weight files that a run's manifest records for it."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return weight_hash(str(directory))


def _reusable_base(out: Path, variant: str, seed: int, size: str, threads: int) -> Path | None:
    """A finished sibling build (other variant, same version/seed/size/threads) whose base can be copied: its base
    files hash to the value its card records (a card written before the card and the manifests shared one weight
    hash records another kind of hash: that sibling's base is trained again rather than copied unchecked)."""
    for other in VARIANTS:
        if other == variant:
            continue
        sib = out.parent / other
        if not is_built(sib):
            continue
        card = read_card(sib)
        if (card.get("version"), card.get("seed"), card.get("size"), card.get("threads")) == (
                ORGANISM_VERSION, seed, size, threads):
            if card["stages"]["base"].get("weights_sha256") == weight_hash(str(sib / "base")):
                return sib
            log.info("not reusing the base of %s: its files do not hash to the value its card records", sib)
    return None


class OrganismMismatchError(IvlensError):
    """A finished build is where a build was asked for, but with other settings than those asked for."""


def reuse_mismatch(card: dict, *, seed: int, size: str, threads: int, measure: bool) -> list[str]:
    """How a finished build's ``card`` differs from the build asked for (``"seed 0 (asked: 3)"``, ...); empty when it
    is that build and can be reused. Its weights depend on the seed, the size and the threads it trained on; a build
    without measurements cannot stand in for a measured one (the reverse can)."""
    diffs = [f"{key} {card.get(key)} (asked: {want})" for key, want in (("seed", seed), ("size", size),
                                                                           ("threads", threads))
             if card.get(key) != want]
    if measure and not card.get("measured"):
        diffs.append("no measurements (asked: measured)")
    return diffs


def reusable(out: Path, *, seed: int, size: str, threads: int, measure: bool) -> bool:
    """Whether ``out`` holds a finished build that is the one asked for (:func:`reuse_mismatch`). Raises
    :class:`OrganismMismatchError` (what differs and the two ways on) when it holds another one."""
    if not is_built(out):
        return False
    diffs = reuse_mismatch(read_card(out), seed=seed, size=size, threads=threads, measure=measure)
    if diffs:
        raise OrganismMismatchError(
            f"{out} holds a finished organism build with {'; '.join(diffs)}: rebuild it there with --force (`force: "
            "true` in a study's organism step), or build elsewhere with --out")
    return True


def build_organism(out: Path | None = None, seed: int = 0, size: str = "small", variant: str = "gist",
                   force: bool = False, measure: bool = True, progress: bool = True,
                   reuse_base: bool = True, threads: int = THREADS) -> Path:
    """Build (or reuse, unless ``force``) the organism ``variant`` into ``out``; returns ``out``. A finished build in
    ``out`` with another seed, size, thread count, or without the measurements asked for, is refused
    (:class:`OrganismMismatchError`), not reused: its card would describe another build than the one asked for.

    Writes ``out/{base,sft,dpo}/`` (safetensors, config, tokenizer with chat template), ``out/card.json`` and
    ``out/build-complete.json`` (the completion marker, written last). The build happens in a staging directory
    that replaces ``out`` only when finished, so a killed build leaves no half-written ``out``; the torch
    thread count and library log levels it sets are restored on return. ``threads``: torch threads to train on;
    the weights depend on them (the order of floating-point sums), so the card records them.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    out = Path(out) if out is not None else organism_dir(variant)
    if not force and reusable(out, seed=seed, size=size, threads=threads, measure=measure):
        log.info("organism already built in %s (use force=True to rebuild)", out)
        return out
    # Build into a staging directory next to ``out`` and move it into place only once every file, the card
    # and the completion marker are written: ``out`` never holds a half-finished build.
    staging = out.parent / f".{out.name}.building"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        with quiet_libraries(extra_loggers=("ivlens.tasks",)), torch_threads(threads):
            _build_into(staging, out, seed=seed, size=size, variant=variant, measure=measure, progress=progress,
                        reuse_base=reuse_base, threads=threads)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("organism %s built in %s", variant, out)
    return out


def _build_into(staging: Path, out: Path, *, seed: int, size: str, variant: str, measure: bool, progress: bool,
                reuse_base: bool, threads: int) -> None:
    """Train, save and measure every stage into ``staging``, then write the card and, last, the completion
    marker. ``out`` is where the build will live (its siblings may hold a reusable base)."""
    spec = SIZES[size]
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    stages: dict[str, dict] = {}

    tasks = D.load_tasks()
    split = {name: D.organism_query_split(t) for name, t in tasks.items()}
    reph_split = {name: D.split_rephrasings(t) for name, t in tasks.items()}

    with _Progress(progress) as bars:
        # ---------------------------------------------------------------- tokenizer + base
        t0 = time.perf_counter()
        sentences = D.pretraining_sentences(tasks, seed)
        sibling = _reusable_base(out, variant, seed, size, threads) if reuse_base else None
        if sibling is not None:
            shutil.copytree(sibling / "base", staging / "base")
            tokenizer = AutoTokenizer.from_pretrained(staging / "base")
            base = AutoModelForCausalLM.from_pretrained(staging / "base", attn_implementation="eager")
            sib_card = read_card(sibling)
            if weight_hash(str(staging / "base")) != sib_card["stages"]["base"]["weights_sha256"]:
                raise RuntimeError(f"base copied from {sibling} does not match its card's hash")
            stages["base"] = {**sib_card["stages"]["base"], "reused_from": str(sibling)}
            timing["tokenizer"] = 0.0
            timing["base"] = time.perf_counter() - t0
            bars.stage("base", 1)(1, 1)
        else:
            tokenizer = train_tokenizer(tokenizer_texts(tasks, sentences, reph_split), D.task_words(tasks),
                                        spec.vocab_size)
            timing["tokenizer"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            base = new_model(spec, tokenizer, seed)
            figures = pretrain(base, tokenizer, sentences, spec, seed, bars.stage("base", spec.pretrain_steps))
            timing["base"] = time.perf_counter() - t0
            stages["base"] = {**figures, "sentences": len(sentences), "seconds": timing["base"],
                              "weights_sha256": _save(base, tokenizer, staging / "base")}
        words = D.task_words(tasks)

        # ---------------------------------------------------------------- SFT
        t0 = time.perf_counter()
        model = copy.deepcopy(base)
        chat_tokens = init_chat_tokens(model, tokenizer)
        n_instructed = round((1 - PLAIN_SHARE) * spec.sft_steps * spec.sft_batch)
        examples = D.sft_examples(tasks, tokenizer, seed, n_instructed=n_instructed, plain_share=PLAIN_SHARE,
                                  gist_share=GIST_SHARE[variant], chat_share=CHAT_SHARE,
                                  main_instruction_share=MAIN_INSTRUCTION_SHARE)
        figures = sft(model, tokenizer, examples, spec, seed, bars.stage("sft", spec.sft_steps))
        timing["sft"] = time.perf_counter() - t0
        stages["sft"] = {**figures, "gist_share": GIST_SHARE[variant], "plain_share": PLAIN_SHARE,
                         "chat_share": CHAT_SHARE, "chat_token_init": {**CHAT_TOKEN_INIT, **chat_tokens},
                         "seconds": timing["sft"],
                         "weights_sha256": _save(model, tokenizer, staging / "sft")}

        # ---------------------------------------------------------------- DPO
        t0 = time.perf_counter()
        pairs = D.dpo_pairs(tasks, tokenizer, seed)
        figures = dpo(model, tokenizer, pairs, spec, seed, bars.stage("dpo", spec.dpo_steps))
        timing["dpo"] = time.perf_counter() - t0
        stages["dpo"] = {**figures, "seconds": timing["dpo"], "weights_sha256": _save(model, tokenizer, staging / "dpo")}
        timing["train_total"] = time.perf_counter() - t_start

        # ---------------------------------------------------------------- measure
        measured: dict = {}
        if measure:
            t0 = time.perf_counter()
            step = bars.stage("measure", len(STAGES))
            for i, stage in enumerate(STAGES):
                # measure the saved checkpoint, loaded as any user would load it
                measured[stage] = measure_stage(load_model(str(staging / stage)), tasks, split,
                                                queries=spec.measure_queries)
                step(i + 1, len(STAGES))
            timing["measure"] = time.perf_counter() - t0
    timing["total"] = time.perf_counter() - t_start

    card = {
        "version": ORGANISM_VERSION,
        "variant": variant,
        "size": size,
        "seed": seed,
        "threads": threads,
        "made_how": MADE_HOW[variant],
        "recipe": {
            "pretraining": "plain causal-LM loop on packed plain-text fact sentences (no instruction format), "
                           f"{pretraining_optimiser(spec)}, fp32",
            "sft": "TRL SFTTrainer, loss on the answer only, raw format '{instruction} {Field}: {query}. Answer: "
                   f"{{label}}' and chat format, the paper's instruction ({MAIN_INSTRUCTION_SHARE:.0%}) or a training "
                   "rephrasing, "
                   f"{PLAIN_SHARE:.0%} plain pretraining text mixed in, gist mask on {GIST_SHARE[variant]:.0%} "
                   "of instructed examples; <|assistant|> (never seen in pretraining) starts SFT with the "
                   "embedding of the raw format's answer cue ':'",
            "dpo": "TRL DPOTrainer, sigmoid loss + SFT term on the chosen answer, frozen reference = SFT model; "
                   "rejected = other subtask's answer / wrong fact / malformed",
        },
        "model": {"architecture": "Olmo2ForCausalLM", "n_layers": spec.n_layers, "d_model": spec.d_model,
                  "n_heads": spec.n_heads, "d_mlp": spec.d_mlp, "vocab_size": len(tokenizer),
                  "parameters": sum(p.numel() for p in base.parameters()), "tied_embeddings": True,
                  "bos_at_position_0": True},
        "tokenizer": {"vocab_size": len(tokenizer), "task_words": len(words),
                      "task_words_single_token": single_token_share(tokenizer, words),
                      "chat_answer_separator": " ", "raw_answer_separator": " "},
        "data": {"pretraining_sentences": len(sentences), "sft_examples": len(examples),
                 "dpo_pairs": len(pairs), "train_query_share": D.TRAIN_QUERY_SHARE,
                 "train_rephrasing_share": TRAIN_REPHRASING_SHARE, "tasks": list(tasks)},
        "split": {name: {"train": split[name]["train"], "heldout": split[name]["heldout"],
                         "heldout_rephrasings": {sub: r["heldout"] for sub, r in reph_split[name].items()},
                         "rephrasings_train_count": {sub: len(r["train"]) for sub, r in reph_split[name].items()}}
                  for name in tasks},
        "stages": stages,
        "measured": measured,
        "acceptance": acceptance(measured) if measured else {},
        "timing": timing,
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                        "python": platform.python_version(), "machine": platform.machine(),
                        "cpu_count": os.cpu_count(), "load_average_1m": os.getloadavg()[0]},
    }
    write_card(staging, card)
    write_build_marker(staging, {stage: stages[stage]["weights_sha256"] for stage in STAGES})
    log.info("organism %s trained and measured in %.0f s", variant, timing["total"])


def refresh_acceptance(directory: Path) -> dict:
    """Recompute the card's ``acceptance`` from its ``measured`` figures (when the checks change, not the
    organism) and rewrite the card; returns the checks."""
    card = read_card(directory)
    card["acceptance"] = acceptance(card["measured"]) if card.get("measured") else {}
    write_card(Path(directory), card)
    return card["acceptance"]


def tokenizer_texts(tasks, sentences: list[str], reph_split=None) -> list[str]:
    """What the organism's tokenizer is trained on: the pretraining ``sentences``, then raw-format texts with every
    *training* instruction (held-out phrasings excluded; ``reph_split``: :func:`~ivlens.organism.data.split_rephrasings`
    per task, computed when not given)."""
    if reph_split is None:
        reph_split = {name: D.split_rephrasings(t) for name, t in tasks.items()}
    texts = list(sentences)
    for name, task in tasks.items():
        q = task.samples[0].query
        for sub, spec in task.subtasks.items():
            for inst in [spec.instruction, *reph_split[name][sub]["train"]]:
                texts.append(D.raw_prompt(inst, task.field, q))
    return texts


#: the smallest margin a check must pass by for a recipe to count as robust (issue 19: seeds 0-4 × 1 and 2 threads,
#: ``benchmarks/budget.py --seeds``); the card records every check's margin
ROBUST_MARGIN = 0.02


def acceptance(measured: dict) -> dict:
    """The organism's checks, each ``{"value", "threshold", "pass", "margin"}``, and ``all_pass``.

    ``margin`` is how far the check passes (negative: how far it fails), in the value's own units: ``value −
    threshold`` for a threshold on a share; for ``base_below_sft``, ``sft − 0.3 − base``; for ``dpo_vs_sft``, DPO's
    contrastive log-prob margin minus SFT's (nats); for IV transfer, the smallest of ``flip − 0.5``, ``ia_top1 − 0.5``
    and ``exact − exact_needed``.
    """
    checks: dict[str, dict] = {}

    def check(name, value, threshold, margin):
        checks[name] = {"value": value, "threshold": threshold, "pass": bool(margin >= 0), "margin": float(margin)}

    for stage in ("sft", "dpo"):
        for task, m in measured[stage].items():
            for part, thr in (("train", 0.95), ("heldout", 0.80)):
                inst = m[part]["instructed"]
                for sub in (k for k in inst if isinstance(inst[k], dict)):
                    check(f"{stage}/{task}/{sub}/acc_{part}", inst[sub]["acc"], thr, inst[sub]["acc"] - thr)
            held = m["heldout"]["instructed"]
            for sub in (k for k in held if isinstance(held[k], dict)):  # the chat template, held-out queries
                check(f"{stage}/{task}/{sub}/acc_chat_heldout", held[sub]["acc_chat"], 0.9,
                      held[sub]["acc_chat"] - 0.9)
            d = m["heldout"]["instructed"]["decides"]
            check(f"{stage}/{task}/decides_heldout", d, 0.80, d - 0.80)
            value = best_iv_transfer(m["iv"], majority_rates(task))
            check(f"{stage}/{task}/iv_transfer", value,
                  "some subtask/target/position/layer with flip >= 0.5, ia_top1 >= 0.5 and exact >= max(0.3, "
                  "ia_top1 * majority-answer rate + 0.1) (flip over >= 10% of queries answered outside the label "
                  "space unpatched)", -1.0 if value is None else value["margin"])
    for task in measured["dpo"]:
        for part in ("train", "heldout"):
            # DPO optimises the preference of the instructed answer over the rejected one, so it must not shrink
            # the log-prob margin of the instructed answer over the other subtask's (the share of queries where it
            # is positive sits at 1.0 in both stages, a ceiling that cannot show a loss or carry a margin)
            s = measured["sft"][task][part]["instructed"]["contrastive_margin"]
            d = measured["dpo"][task][part]["instructed"]["contrastive_margin"]
            check(f"dpo_vs_sft/{task}/contrastive_margin_{part}", {"sft": s, "dpo": d}, "dpo >= sft (nats)", d - s)
        base_acc = _mean_acc(measured["base"][task])
        sft_acc = _mean_acc(measured["sft"][task])
        check(f"base_below_sft/{task}", {"base": base_acc, "sft": sft_acc}, "base <= sft - 0.3",
              sft_acc - 0.3 - base_acc)
        rec = [v for part in ("train", "heldout") for v in measured["base"][task][part]["recall"].values()]
        check(f"base_recall/{task}", min(rec), 0.9, min(rec) - 0.9)
    checks["all_pass"] = all(c["pass"] for c in checks.values())
    return checks


def majority_rates(task_name: str) -> dict[str, float]:
    """Per subtask: the share of queries that the single most common answer would get right (chance level
    for ``exact``: e.g. ``no`` for can_fly, ``brown`` for anim_color)."""
    task = D.load_tasks()[task_name]
    out = {}
    for sub in task.subtasks:
        labels = {a for s in task.samples for a in s.answers[sub]}
        out[sub] = max(sum(lab in s.answers[sub] for s in task.samples) for lab in labels) / len(task.samples)
    return out


def best_iv_transfer(iv: dict, majority: dict[str, float]) -> dict | None:
    """The single-layer IV patch that best moves queries answered outside the subtask's label space
    (unpatched) into it, with the instructed answer top-1 above chance: among configurations (subtask,
    target style, position, layer) where at least 10 % of the queries are outside unpatched, the first that
    passes (``flip >= 0.5, ia_top1 >= 0.5, exact >= max(0.3, ia_top1 * majority + 0.1)``) with the largest margin
    (the smallest of ``flip − 0.5``, ``ia_top1 − 0.5``, ``exact − exact_needed``: the configuration furthest from
    failing), else the one with the highest ``flip``.

    Chance level of ``exact``: a model that answers inside the label space for a share ``ia_top1`` of the queries
    and there always gives the subtask's most common answer is right for ``ia_top1 * majority`` of them (``no``
    for can_fly: 0.62 of all queries); ``exact`` must beat that by 0.1. ``exact / ia_top1`` (reported as
    ``acc_in_space``) is the accuracy among the answers that follow the instruction."""
    cands = []
    for sub, res in iv["subtasks"].items():
        for target, c in testable_configs(iv, sub):
            need = max(0.3, c["ia_top1"] * majority[sub] + 0.1)
            margin = min(c["flip"] - 0.5, c["ia_top1"] - 0.5, c["exact"] - need)
            cands.append({"subtask": sub, "target": target, **c, "exact_needed": need,
                          "acc_in_space": c["exact"] / c["ia_top1"] if c["ia_top1"] else None,
                          "unpatched_ia_top1": res["unpatched"][target.split("/")[0]]["ia_top1"],
                          "pass": margin >= 0, "margin": margin})
    if not cands:
        return None
    return max(cands, key=lambda c: (c["pass"], c["margin"] if c["pass"] else c["flip"], c["flip"]))


def _mean_acc(m: dict) -> float:
    vals = [v["acc"] for part in ("train", "heldout") for v in m[part]["instructed"].values() if isinstance(v, dict)]
    return sum(vals) / len(vals)


def ensure_organism(variant: str = DEFAULT_VARIANT) -> Path:
    """The build directory of ``variant``, building it first (default size and seed) if it is missing."""
    directory = organism_dir(variant)
    if not is_built(directory):
        build_organism(out=directory, variant=variant)
    return directory
