"""Tiny random causal LMs built from config (milliseconds, no download) and a small trained BPE tokenizer.

>>> model = tiny_model("olmo2")            # Olmo2ForCausalLM, 4 layers, d_model 64, 4 heads
>>> tok = tiny_tokenizer()                  # byte-level BPE, vocab ~300, eos/pad/bos set
"""

from __future__ import annotations

from functools import lru_cache

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ARCHS = ("olmo2", "llama", "qwen2", "gpt2")
TINY_VOCAB = 384

_CORPUS = [
    "Given an adjective, state its antonym. Adjective: big. Answer: small",
    "Given an adjective, state its comparative form. Adjective: big. Answer: bigger",
    "Given an animal, state its most typical associated color. Animal: crow. Answer: black",
    "Given an animal, state whether or not it can fly. Print 'yes' or 'no'. Animal: crow. Answer: yes",
    "the antonym of good is bad. the comparative of good is better. the owl can fly.",
    "Provide the opposite of a given adjective. State the antonym for any adjective supplied.",
    "For the given sentence, count the number of objects listed and print it as a digit.",
] * 20


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB - 8,
        special_tokens=["<|endoftext|>", "<|pad|>", "<|bos|>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS, trainer)
    return tok.to_str()


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tiny_tokenizer(chat_template: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on task-like sentences; ``<|endoftext|>`` is eos, ``<|pad|>`` pad."""
    from tokenizers import Tokenizer

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        bos_token="<|bos|>",
    )
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_config(arch: str, n_layers: int = 4, d_model: int = 64, n_heads: int = 4, n_kv_heads: int | None = None):
    """A config for a tiny model of ``arch`` (one of :data:`ARCHS`); GQA when ``n_kv_heads < n_heads``."""
    kv = n_kv_heads or n_heads
    common = dict(vocab_size=TINY_VOCAB, pad_token_id=1, eos_token_id=0, bos_token_id=2)
    if arch == "olmo2":
        return Olmo2Config(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                           num_attention_heads=n_heads, num_key_value_heads=kv, max_position_embeddings=256,
                           tie_word_embeddings=False, **common)
    if arch == "llama":
        return LlamaConfig(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                           num_attention_heads=n_heads, num_key_value_heads=kv, max_position_embeddings=256,
                           tie_word_embeddings=False, **common)
    if arch == "qwen2":
        return Qwen2Config(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                           num_attention_heads=n_heads, num_key_value_heads=kv, max_position_embeddings=256,
                           tie_word_embeddings=False, **common)
    if arch == "gpt2":
        return GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=256, **common)
    raise ValueError(f"unknown tiny architecture {arch!r}; choose from {ARCHS}")


_CLASSES = {"olmo2": Olmo2ForCausalLM, "llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM, "gpt2": GPT2LMHeadModel}


def tiny_model(arch: str, seed: int = 0, attn_implementation: str = "eager", **kw) -> PreTrainedModel:
    """A randomly initialised tiny ``arch`` model in eval mode, fp32, deterministic in ``seed``.

    Norm weights and biases are randomised too (HF initialises them to 1 / 0, which would hide bugs
    in code that forgets them).
    """
    torch.manual_seed(seed)
    cfg = tiny_config(arch, **kw)
    cfg._attn_implementation = attn_implementation
    model = _CLASSES[arch](cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name or name.endswith("ln_f.weight") or name.endswith("ln_f.bias"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    return model.eval()
