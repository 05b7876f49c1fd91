"""The three training stages of a model organism: pretraining → SFT → DPO.

- :func:`pretrain`: a plain causal-LM loop (next-token cross-entropy on every real token) over rows packed
  from whole pretraining sentences, each row ``<|bos|> s_1 \\n s_2 \\n ...`` (at most ``seq_len`` tokens),
  Muon (:class:`~ivlens.organism.muon.Fp32Muon`) on the blocks' matrices and AdamW on the rest, linear warm-up
  then stable then decay, fp32 (see :data:`BF16_AUTOCAST`). The HF ``Trainer`` would add nothing but start-up time here.
- :func:`sft`: TRL ``SFTTrainer`` on pre-tokenised rows (loss on the answer only; plain rows: loss on every
  token), with :class:`~ivlens.organism.gist.GistCollator` for the 4-D gist mask (see :class:`GistSFTTrainer`
  for why a subclass).
- :func:`dpo`: TRL ``DPOTrainer`` (sigmoid DPO loss plus the SFT term on the chosen answer) with a frozen
  reference copy of the SFT model.

Every stage is deterministic in its seed (same data order, same initialisation, same dropout-free updates).
"""

from __future__ import annotations

import copy
import logging
import math
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import Olmo2Config, Olmo2ForCausalLM, PreTrainedTokenizerFast, TrainerCallback
from transformers.trainer_callback import PrinterCallback

from ivlens.organism.data import SFTExample
from ivlens.organism.gist import GistCollator, instruction_token_span
from ivlens.organism.muon import Fp32Muon
from ivlens.organism.tokenizer import ASSISTANT, USER
from ivlens.tasks.padding import pad_tokens

log = logging.getLogger(__name__)

#: ``on_step(step, total, loss)``: progress reporting hook
StepHook = Callable[[int, int, float | None], None]

#: Train in fp32. At this size bf16 autocast is *slower* on CPU (a 32 × 64-token step of the small organism:
#: 0.68 s with autocast vs 0.48 s in fp32, measured on an idle 2-core AVX-512 machine) and it learned worse:
#: with bf16 the seed-0 build reached 0.92-0.94 adjective accuracy on training queries and 0.76-0.83 held
#: out; in fp32 1.00 on both (organism v1 → v2).
BF16_AUTOCAST = False


#: torch threads a build trains with (fixed: the result depends on the summation order, so on the thread count)
THREADS = 2


@dataclass(frozen=True)
class OrganismSize:
    """Model shape and the length of each stage."""

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    vocab_size: int
    seq_len: int
    pretrain_steps: int
    pretrain_batch: int
    pretrain_lr: float
    sft_steps: int
    sft_batch: int
    sft_lr: float
    dpo_steps: int
    dpo_batch: int
    dpo_lr: float
    dpo_sft_weight: float = 1.0
    dpo_beta: float = 0.1
    #: pretraining learning-rate schedule after the warm-up: "cosine" (decay to 5 % over the run) or "wsd"
    #: (warm-up, stable at the peak, then a linear decay to 5 % over the last ``pretrain_decay_share`` of the steps)
    #: "adamw", or "muon": Muon (orthogonalised momentum: torch.optim.Muon with its Newton–Schulz iteration in fp32,
    #: :class:`~ivlens.organism.muon.Fp32Muon`) on the blocks' weight matrices and AdamW on the embedding and norms
    pretrain_optimizer: str = "adamw"
    pretrain_schedule: str = "cosine"
    pretrain_decay_share: float = 0.25
    #: queries per task and split that the build measures, the first of each split (``None``: all of them)
    measure_queries: int | None = None


SIZES = {
    # the organism: 2.6 M parameters; the whole build, measurements included, within 8 minutes on a 2-core machine
    # of 56 GFLOP/s (benchmarks/budget.py; about 2.5 min at 160 GFLOP/s). Pretraining: Muon, warm-up-stable-decay,
    # rows of 24 tokens (2-3 sentences: fewer distracting subjects per row); see docs/organism.md for what each
    # choice bought
    "small": OrganismSize("small", n_layers=6, d_model=192, n_heads=4, d_mlp=384, vocab_size=2000, seq_len=24,
                          pretrain_steps=200, pretrain_batch=88, pretrain_lr=1.2e-2,
                          sft_steps=240, sft_batch=32, sft_lr=3e-3,
                          dpo_steps=24, dpo_batch=32, dpo_lr=2e-5,
                          pretrain_optimizer="muon", pretrain_schedule="wsd", pretrain_decay_share=0.3),
    # a cut-down build for tests (seconds): same pipeline, too short to learn the tasks, measured on 12 queries per
    # task and split (measuring every query took 24 of its 28 seconds)
    "tiny": OrganismSize("tiny", n_layers=6, d_model=64, n_heads=4, d_mlp=128, vocab_size=1200, seq_len=64,
                         pretrain_steps=12, pretrain_batch=8, pretrain_lr=3e-3,
                         sft_steps=6, sft_batch=8, sft_lr=5e-4,
                         dpo_steps=3, dpo_batch=8, dpo_lr=1e-5, measure_queries=12),
}


def new_model(size: OrganismSize, tokenizer: PreTrainedTokenizerFast, seed: int) -> Olmo2ForCausalLM:
    """A freshly initialised ``Olmo2ForCausalLM`` of ``size`` (tied embeddings, eager attention)."""
    cfg = Olmo2Config(
        vocab_size=len(tokenizer), hidden_size=size.d_model, intermediate_size=size.d_mlp,
        num_hidden_layers=size.n_layers, num_attention_heads=size.n_heads, num_key_value_heads=size.n_heads,
        max_position_embeddings=256, tie_word_embeddings=True, rms_norm_eps=1e-6,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return Olmo2ForCausalLM(cfg)


# ----------------------------------------------------------------------------------------- pretraining
def pack_rows(sentences: list[list[int]], bos_id: int, sep_id: int, seq_len: int, n_rows: int,
              rng: random.Random) -> list[list[int]]:
    """``n_rows`` rows ``[bos, s_1, sep, s_2, sep, ...]`` of whole tokenised sentences (≤ ``seq_len`` tokens),
    drawing sentences in reshuffled passes over the corpus."""
    rows: list[list[int]] = []
    order: list[int] = []
    row = [bos_id]
    while len(rows) < n_rows:
        if not order:
            order = list(range(len(sentences)))
            rng.shuffle(order)
        s = sentences[order.pop()]
        if len(row) + len(s) + 1 > seq_len and len(row) > 1:
            rows.append(row)
            row = [bos_id]
        row = row + s[: seq_len - 2] + [sep_id]
    return rows


def pretrain_optimizers(model: Olmo2ForCausalLM, size: OrganismSize) -> list[torch.optim.Optimizer]:
    """The pretraining optimisers (see :attr:`OrganismSize.pretrain_optimizer`)."""
    adamw = {"lr": size.pretrain_lr, "betas": (0.9, 0.95), "weight_decay": 0.01}
    if size.pretrain_optimizer == "adamw":
        return [torch.optim.AdamW(model.parameters(), **adamw)]
    embed = model.get_input_embeddings().weight
    matrices = [p for p in model.model.layers.parameters() if p.ndim == 2]
    rest = [p for p in model.parameters() if p is embed or not any(p is m for m in matrices)]
    return [Fp32Muon(matrices, lr=size.pretrain_lr, weight_decay=0.01, adjust_lr_fn="match_rms_adamw"),
            torch.optim.AdamW(rest, **adamw)]


def pretrain(model: Olmo2ForCausalLM, tokenizer: PreTrainedTokenizerFast, sentences: list[str],
             size: OrganismSize, seed: int, on_step: StepHook | None = None) -> dict:
    """Causal-LM pretraining; returns ``{"steps", "tokens", "loss_first", "loss_last"}`` (loss averaged over
    the first / last 20 steps).

    Recalling a fact needs an attention head that finds the subject and an MLP that maps it; learning both shows a
    long loss plateau before recall appears all at once, late and at a step that varies from seed to seed (AdamW,
    rows of 64 tokens: recall appeared between steps 240 and 320 of 440). Three choices bring it forward and make
    it regular (docs/organism.md has the runs): Muon on the blocks' matrices (:func:`pretrain_optimizers`; it is
    known to learn the rare items of an associative memory faster than Adam), rows of 24 tokens (two or three
    sentences, so fewer other subjects to attend to), and a warm-up-stable-decay schedule that stays at the peak
    rate until recall has appeared (steps 80-160 of 200 in v9; docs/organism.md)."""
    rng = random.Random(f"{seed}:pack")
    sep_id = tokenizer("\n", add_special_tokens=False).input_ids[0]
    tokenised = tokenizer(sentences, add_special_tokens=False).input_ids
    steps, batch = size.pretrain_steps, size.pretrain_batch
    rows = pack_rows(tokenised, tokenizer.bos_token_id, sep_id, size.seq_len, steps * batch, rng)
    opts = pretrain_optimizers(model, size)
    warmup = max(1, steps // 20)

    decay_from = steps - max(1, round(size.pretrain_decay_share * steps))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if size.pretrain_schedule == "wsd":
            return 1.0 if step < decay_from else 0.05 + 0.95 * (steps - step) / (steps - decay_from)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheds = [torch.optim.lr_scheduler.LambdaLR(opt, lr_at) for opt in opts]
    model.train()
    losses, n_tokens = [], 0
    for step in range(steps):
        chunk = rows[step * batch:(step + 1) * batch]
        padded = pad_tokens(chunk, tokenizer.pad_token_id, "right")
        ids, real = padded.input_ids, padded.attention_mask.bool()
        labels = ids.masked_fill(~real, -100)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16_AUTOCAST):
            loss = model(input_ids=ids, attention_mask=real.long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt, sched in zip(opts, scheds, strict=True):
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        n_tokens += int(real.sum())
        if on_step:
            on_step(step + 1, steps, losses[-1])
    model.eval()
    k = min(20, len(losses))
    return {"steps": steps, "batch": batch, "rows": len(rows), "tokens": n_tokens, "lr": size.pretrain_lr,
            "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k}


# ------------------------------------------------------------------------------------------------ SFT
#: the chat-template token each one starts SFT as (see :func:`init_chat_tokens`)
CHAT_TOKEN_INIT = {ASSISTANT: ":"}


def init_chat_tokens(model: Olmo2ForCausalLM, tokenizer: PreTrainedTokenizerFast) -> dict[str, float]:
    """Give the assistant-turn token a usable embedding before SFT: start ``<|assistant|>`` as the raw format's
    answer cue ``:`` (the token it stands in for: ``... Answer:`` vs ``...\n<|assistant|>``).

    Why: the chat-template tokens never occur in pretraining, and with tied embeddings every token that is never
    a target is pushed along one direction by the unembedding gradient: after pretraining, ``<|assistant|>``,
    ``<|user|>``, ``<|system|>`` (and ``" Answer"``) have cosine 0.97 with each other. The model then cannot tell
    the assistant turn from the user turn, and SFT left it answering one fixed label in chat (held-out chat
    accuracy 0.00-0.30 on three subtasks in organism v4, raw format 0.95-1.00). Re-using an existing token's
    embedding for a new one is the usual way of adding tokens to a trained model (transformers'
    ``resize_token_embeddings`` samples them around the old ones' mean); the answer cue is the one whose role
    the token takes. Returns the cosine of ``<|assistant|>`` with ``<|user|>`` before and after, for the card."""
    emb = model.get_input_embeddings().weight
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in (ASSISTANT, USER)}

    def cosine() -> float:
        return float(torch.nn.functional.cosine_similarity(emb[ids[ASSISTANT]], emb[ids[USER]], dim=0))

    with torch.no_grad():
        before = cosine()
        for tok, source in CHAT_TOKEN_INIT.items():
            src = tokenizer(source, add_special_tokens=False).input_ids
            emb[tokenizer.convert_tokens_to_ids(tok)] = emb[src].mean(0)
        return {"assistant_user_cosine_before": before, "assistant_user_cosine_after": cosine()}


def tokenise_sft(examples: list[SFTExample], tokenizer: PreTrainedTokenizerFast) -> list[dict]:
    """Rows ``{"input_ids", "labels", "gist_start", "gist_end"}``: prompt tokens (BOS first) + completion tokens,
    labels only on the completion (every token for plain text); ``gist_end = T_inst`` or ``-1``."""
    bos = tokenizer.bos_token
    rows = []
    for ex in examples:
        if ex.kind == "plain":
            ids = tokenizer(ex.completion).input_ids
            rows.append({"input_ids": ids, "labels": [-100] + ids[1:], "gist_start": -1, "gist_end": -1})
            continue
        has_bos = ex.prompt.startswith(bos)
        enc = tokenizer(ex.prompt, add_special_tokens=not has_bos, return_offsets_mapping=True)
        comp = tokenizer(ex.completion, add_special_tokens=False).input_ids
        start, end = -1, -1
        if ex.gist:
            start, end = instruction_token_span(enc.offset_mapping, ex.instruction_span)
        rows.append({"input_ids": enc.input_ids + comp, "labels": [-100] * len(enc.input_ids) + comp,
                     "gist_start": start, "gist_end": end})
    return rows


def _gist_sft_trainer_class():
    from transformers import Trainer
    from trl import SFTTrainer

    class GistSFTTrainer(SFTTrainer):
        """``SFTTrainer`` that feeds a 4-D gist attention mask to the model.

        Why a subclass: TRL's collator builds a 2-D padding mask, and ``compute_loss`` both passes
        ``attention_mask`` to the model and sums it to count trained tokens. Our collator passes the 4-D
        additive mask as ``attention_mask`` (transformers 5 uses a 4-D mask as given) plus ``token_mask``;
        this subclass removes ``token_mask`` before the forward and restores the token count from it.
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            token_mask = inputs.pop("token_mask")
            # the model's own causal-LM loss (``Trainer.compute_loss``): TRL's fused LM head would also compute the
            # entropy and token accuracy of every step, which nobody reads here and which cost a third of a step
            result = Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            if self.model.training:
                self._total_train_tokens += int(token_mask.sum())
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return result

    return GistSFTTrainer


class _ProgressCallback(TrainerCallback):
    def __init__(self, on_step: StepHook | None, total: int):
        self.on_step, self.total, self.losses = on_step, total, []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))

    def on_step_end(self, args, state, control, **kwargs):
        if self.on_step:
            self.on_step(state.global_step, self.total, self.losses[-1] if self.losses else None)


def _common_args(out_dir: str, steps: int, batch: int, lr: float, seed: int) -> dict:
    import dataclasses

    from transformers import TrainingArguments

    # TRL's configs default to checkpointing on (slower, and nothing to save at this size); newer transformers
    # call it ``activation_checkpointing`` and warn on the old name
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    no_ckpt = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    return {
        "output_dir": out_dir, "max_steps": steps, "per_device_train_batch_size": batch, "learning_rate": lr,
        "lr_scheduler_type": "cosine", "warmup_steps": max(1, steps // 20), "weight_decay": 0.0, "logging_steps": 1,
        "save_strategy": "no", "report_to": "none", "use_cpu": True, "bf16": BF16_AUTOCAST, "seed": seed,
        "data_seed": seed, no_ckpt: False, "dataloader_num_workers": 0, "disable_tqdm": True, "max_grad_norm": 1.0,
    }


def sft(model: Olmo2ForCausalLM, tokenizer: PreTrainedTokenizerFast, examples: list[SFTExample],
        size: OrganismSize, seed: int, on_step: StepHook | None = None) -> dict:
    """TRL SFT on ``examples`` (gist rows under the gist mask); returns the stage's figures."""
    from datasets import Dataset
    from trl import SFTConfig

    rows = tokenise_sft(examples, tokenizer)
    dataset = Dataset.from_list(rows)
    cb = _ProgressCallback(on_step, size.sft_steps)
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(**_common_args(tmp, size.sft_steps, size.sft_batch, size.sft_lr, seed),
                         remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True},
                         max_length=None)
        trainer = _gist_sft_trainer_class()(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
            data_collator=GistCollator(pad_token_id=tokenizer.pad_token_id), callbacks=[cb],
        )
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    model.eval()
    k = min(10, len(cb.losses))
    kinds = {kind: sum(e.kind == kind for e in examples) for kind in ("raw", "chat", "plain")}
    return {"steps": size.sft_steps, "batch": size.sft_batch, "lr": size.sft_lr, "examples": len(examples),
            "examples_by_kind": kinds, "gist_examples": sum(e.gist for e in examples),
            "tokens": sum(len(r["input_ids"]) for r in rows),
            "loss_first": sum(cb.losses[:k]) / max(k, 1), "loss_last": sum(cb.losses[-k:]) / max(k, 1)}


# ------------------------------------------------------------------------------------------------ DPO
def dpo(model: Olmo2ForCausalLM, tokenizer: PreTrainedTokenizerFast, pairs: list[dict], size: OrganismSize,
        seed: int, on_step: StepHook | None = None) -> dict:
    """TRL DPO: ``loss = sigmoid-DPO(β) + w · NLL(chosen)`` against a frozen copy of the input model."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    cb = _ProgressCallback(on_step, size.dpo_steps)
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(**_common_args(tmp, size.dpo_steps, size.dpo_batch, size.dpo_lr, seed),
                         beta=size.dpo_beta, loss_type=["sigmoid", "sft"],
                         loss_weights=[1.0, size.dpo_sft_weight], max_length=128)
        # an explicit frozen reference: TRL would otherwise reload it from ``config._name_or_path``
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                             processing_class=tokenizer, callbacks=[cb])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        history = [h for h in trainer.state.log_history if "loss" in h]
    model.eval()
    first, last = (history[0], history[-1]) if history else ({}, {})
    keys = ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")
    return {"steps": size.dpo_steps, "batch": size.dpo_batch, "lr": size.dpo_lr, "beta": size.dpo_beta,
            "sft_weight": size.dpo_sft_weight, "pairs": len(pairs),
            "pairs_by_kind": {k: sum(p["kind"] == k for p in pairs) for k in ("other_subtask", "wrong_fact",
                                                                               "malformed")},
            "first": {k: first.get(k) for k in keys}, "last": {k: last.get(k) for k in keys},
            "loss_first": first.get("loss"), "loss_last": last.get("loss")}
