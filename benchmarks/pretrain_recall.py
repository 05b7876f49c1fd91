"""Pretrain an organism's base with a variant of the recipe and print its plain-text recall every few steps: how
recipe work finds where the recall plateau ends (docs/organism.md, "Why this recipe"). No files are written.

    python benchmarks/pretrain_recall.py --seed 4 --threads 1                  # the recipe as it is
    python benchmarks/pretrain_recall.py --seed 4 --threads 1 --steps 180 --decay-share 0.2

Prints ``step, loss, minimum recall`` (over both tasks' relations, training and held-out queries) every ``--every``
steps, then every relation's recall after the last step as one JSON line. The trajectory is the build's own (the
same tokenizer, packing, optimisers and schedule; measuring recall does not change it)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from ivlens.organism import data as D
from ivlens.organism.build import tokenizer_texts
from ivlens.organism.measure import recall
from ivlens.organism.tokenizer import train_tokenizer
from ivlens.organism.train import SIZES, new_model, pretrain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the weights depend on them)")
    ap.add_argument("--size", default="small", choices=sorted(SIZES))
    ap.add_argument("--steps", type=int, help="pretraining steps (default: the recipe's)")
    ap.add_argument("--decay-share", type=float, help="share of the steps in the final decay (default: the recipe's)")
    ap.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    ap.add_argument("--every", type=int, default=20, help="measure recall every this many steps")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    changes = {k: v for k, v in (("pretrain_steps", args.steps), ("pretrain_decay_share", args.decay_share),
                                 ("pretrain_lr", args.lr)) if v is not None}
    spec = dataclasses.replace(SIZES[args.size], **changes)
    tasks = D.load_tasks()
    split = {name: D.organism_query_split(t) for name, t in tasks.items()}
    sentences = D.pretraining_sentences(tasks, args.seed)
    tokenizer = train_tokenizer(tokenizer_texts(tasks, sentences), D.task_words(tasks), spec.vocab_size)
    model = new_model(spec, tokenizer, args.seed)
    last: dict[str, float] = {}

    def on_step(step: int, total: int, loss: float) -> None:
        if step % args.every and step != total:
            return
        model.eval()
        last.clear()
        last.update({f"{name}/{part}/{sub}": value for name, task in tasks.items() for part in ("train", "heldout")
                     for sub, value in recall(model, tokenizer, task, split[name][part]).items()})
        model.train()
        print(f"step {step}: loss {loss:.3f}, minimum recall {min(last.values()):.3f}", flush=True)

    t0 = time.perf_counter()
    pretrain(model, tokenizer, sentences, spec, args.seed, on_step)
    print(f"{spec.pretrain_steps} steps in {time.perf_counter() - t0:.0f} s (recall included)")
    print(json.dumps({k: round(v, 4) for k, v in last.items()}))


if __name__ == "__main__":
    main()
