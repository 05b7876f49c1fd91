"""``ivlens organism build --dry-run``: the cost estimate of a build from its recipe
(:data:`ivlens.organism.train.SIZES`), and a dry run's view of an organism that is not built yet
(:func:`organism_recipe_info`, :func:`organism_shape`). The registry's cost estimate is :func:`organism_spec_costs`;
the build's time on this machine (:func:`ivlens.dry_run.organism_build_seconds`) and printing are
:mod:`ivlens.dry_run`'s."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from transformers import Olmo2Config

from ivlens.estimate.calibrate import train_step_latency
from ivlens.estimate.costs import CostEstimate, TrainStage, add_startup, train_cost
from ivlens.estimate.flops import ModelShape
from ivlens.estimate.model import ApproxTokenizer, ModelInfo

from .data import organism_query_split
from .train import SIZES, pretrain_optimizers

#: Padded tokens per row of each training stage: pretraining rows are packed to ``seq_len``; SFT batches pad to
#: their longest row (33 tokens on average in the v6 build: plain-text rows of 3 sentences), DPO batches to their
#: longest prompt + answer (29).
TRAIN_ROW_TOKENS = {"sft": 33, "dpo": 32}

#: a no-grad forward's CPU time as a share of an AdamW training step on the same rows (forward, backward, update)
#: of the organism: 0.29 timed on the DPO stage's rows (64 × 32 tokens; 0.138 s against 0.472 s on one thread)
FORWARD_SHARE_OF_STEP = 0.3


def organism_costs(size: str = "small", variant: str = "gist", measure: bool = True, device: str = "cpu",
                   time_steps: bool = True, threads: int = 2) -> list[CostEstimate]:
    """The cost estimate of ``ivlens organism build`` (the sizes of :data:`ivlens.organism.train.SIZES`).

    ``time_steps``: time one real optimiser step of pretraining and of SFT on ``device`` (a model of the organism's
    config, random weights; on a CPU in wall time on the build's ``threads``, as the machine is loaded now; about
    3 s in all) instead of modelling training from FLOPs and layer calls; a DPO step is SFT's step scaled to the
    chosen and rejected rows together, plus a no-grad forward of the reference model
    (:data:`FORWARD_SHARE_OF_STEP`)."""
    spec = SIZES[size]
    shape = organism_shape(size)
    seq = {"pretrain": spec.seq_len, **TRAIN_ROW_TOKENS}
    stages = [TrainStage("pretrain", spec.pretrain_steps, spec.pretrain_batch, seq["pretrain"]),
              TrainStage("sft", spec.sft_steps, spec.sft_batch, seq["sft"]),
              TrainStage("dpo", spec.dpo_steps, spec.dpo_batch, seq["dpo"], passes=8)]
    step_seconds = None
    cpu = torch.device(device).type == "cpu"
    if time_steps:
        config = organism_recipe_info("organism", size).config
        pre, sft, dpo = stages
        # best of 2 after a warm-up: the estimate is printed before the build starts, so its own time is part of
        # the main job's (best of 3 and a timed DPO step took 7.3 s here). Timed on the build's threads: the
        # pretraining step is only 1.64-1.74 times as fast on two threads as on one (one thread's time halved left
        # the estimate 15-20 % short)
        pre_s = train_step_latency(config, pre.batch, pre.seq_len, device, steps=2,
                                   optimizers=partial(pretrain_optimizers, size=spec),
                                   optimizer_name=spec.pretrain_optimizer, threads=threads if cpu else None)
        sft_s = train_step_latency(config, sft.batch, sft.seq_len, device, steps=2,
                                   threads=threads if cpu else None)
        # a DPO step is an AdamW step on the chosen and rejected rows (SFT's step scaled by tokens) plus a no-grad
        # forward of the reference model on the same rows
        dpo_train = sft_s * (2 * dpo.batch * dpo.seq_len) / (sft.batch * sft.seq_len)
        step_seconds = {"pretrain": pre_s, "sft": sft_s, "dpo": dpo_train * (1 + FORWARD_SHARE_OF_STEP)}
    # the card's measurements: per stage and task, ~110 samples × ~16 scored prompts, and single-layer IV transfer
    cost = train_cost(shape, stages, measure_prompts=3 * 2 * 110 * 16 if measure else 0, step_seconds=step_seconds,
                      step_wall=time_steps and cpu, model=f"organism-{variant} ({size})")
    add_startup(cost, shape, "float32")
    cost.threads = threads
    cost.notes.append(f"{variant} variant, {shape.n_params / 1e6:.1f} M parameters; tokenizer training and data "
                      "generation not counted" + ("; training time from one timed step per stage" if time_steps else ""))
    return [cost]


def organism_spec_costs(s, infos: Sequence[ModelInfo] = ()) -> list[CostEstimate]:
    """:func:`organism_costs` of an :class:`~ivlens.organism.OrganismSpec` (no models: it builds them)."""
    return organism_costs(s.size, s.variant, s.measure, threads=s.threads)


def organism_shape(size: str = "small") -> ModelShape:
    """The organism's sizes (:data:`ivlens.organism.train.SIZES`) as a :class:`ModelShape`."""
    spec = SIZES[size]
    shape = ModelShape("olmo2", spec.n_layers, spec.d_model, spec.n_heads, spec.n_heads, spec.d_model // spec.n_heads,
                       spec.d_mlp, spec.vocab_size, gated_mlp=True, tied=True)
    return shape.with_params(shape.count_params())


#: the ``path`` of a :class:`ModelInfo` that stands for an organism not built yet
RECIPE_SUFFIX = " (recipe)"


def organism_recipe_info(name: str, size: str = "small") -> ModelInfo:
    """A dry run's view of an organism that is not built yet: its recipe's sizes and config
    (:data:`ivlens.organism.train.SIZES`), and prompt lengths estimated by
    :class:`~ivlens.estimate.model.ApproxTokenizer`."""
    s = SIZES[size]
    config = Olmo2Config(vocab_size=s.vocab_size, hidden_size=s.d_model, intermediate_size=s.d_mlp,
                         num_hidden_layers=s.n_layers, num_attention_heads=s.n_heads, num_key_value_heads=s.n_heads,
                         max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=None,
                         eos_token_id=None, pad_token_id=None)
    note = (f"{name} is not built yet: sized from its recipe ({size}), prompt lengths estimated (no tokenizer "
            "until the build has trained one)")
    return ModelInfo(name, f"{name}{RECIPE_SUFFIX}", organism_shape(size), ApproxTokenizer(None, 0, 0), note, config,
                     split=organism_query_split)
