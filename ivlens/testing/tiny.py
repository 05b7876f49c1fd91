"""Tiny random causal LMs built from config (milliseconds, no download) and a small trained BPE tokenizer.

>>> model = tiny_model("olmo2")            # Olmo2ForCausalLM, 4 layers, d_model 64, 4 heads
>>> tok = tiny_tokenizer()                  # byte-level BPE, vocab ~300, eos/pad/bos set
"""

from __future__ import annotations

from functools import lru_cache

import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Olmo3Config,
    Olmo3ForCausalLM,
    OlmoConfig,
    OlmoForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    StableLmConfig,
    StableLmForCausalLM,
    Starcoder2Config,
    Starcoder2ForCausalLM,
)

from ivlens.testing import ARCHS, NO_ADAPTER_ARCHS

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


#: The sliding window of the tiny models that have one: shorter than every test prompt, so it bites.
TINY_WINDOW = 3


def tiny_config(arch: str, n_layers: int = 4, d_model: int = 64, n_heads: int = 4, n_kv_heads: int | None = None):
    """A config for a tiny model of ``arch`` (one of :data:`ARCHS`); GQA when ``n_kv_heads < n_heads``, MQA at 1.

    Each family's distinguishing features are switched on and sized so that they change the output of a random
    model: sliding windows of :data:`TINY_WINDOW` tokens (interleaved with full layers where the family has
    ``layer_types``), Gemma-2's attention and final soft-caps, Gemma-3's local RoPE base, OLMo-1's ``clip_qkv``,
    partial rotary (Phi-3, GPT-NeoX), explicit ``head_dim`` unequal to ``d_model / n_heads`` (Gemma, Qwen3).
    GPT-2 and GPT-NeoX have multi-head attention only (``n_kv_heads`` is ignored).
    """
    kv = n_kv_heads or n_heads
    common = dict(vocab_size=TINY_VOCAB, pad_token_id=1, eos_token_id=0, bos_token_id=2)
    dec = dict(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
               num_attention_heads=n_heads, num_key_value_heads=kv, max_position_embeddings=256,
               tie_word_embeddings=False, **common)
    half = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
    if arch == "olmo2":
        return Olmo2Config(**dec)
    if arch == "llama":
        return LlamaConfig(**dec)
    if arch == "qwen2":
        return Qwen2Config(**dec)
    if arch == "gpt2":
        return GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=256, **common)
    if arch == "gemma":  # tied unembedding, embeddings x sqrt(d_model), (1 + w) norms, GeGLU
        return GemmaConfig(**{**dec, "tie_word_embeddings": True}, head_dim=2 * d_model // n_heads)
    if arch == "gemma2":  # sandwich norms, query_pre_attn_scalar, both soft-caps, alternate sliding layers
        return Gemma2Config(**{**dec, "tie_word_embeddings": True}, head_dim=d_model // n_heads,
                            query_pre_attn_scalar=d_model // n_heads // 2, sliding_window=TINY_WINDOW,
                            layer_types=half, attn_logit_softcapping=0.05, final_logit_softcapping=0.5)
    if arch == "gemma3":  # + QK-norm per head, local RoPE base on the sliding layers
        return Gemma3TextConfig(**{**dec, "tie_word_embeddings": True}, head_dim=d_model // n_heads,
                                query_pre_attn_scalar=2 * d_model // n_heads, sliding_window=TINY_WINDOW,
                                layer_types=["sliding_attention"] * (n_layers - 1) + ["full_attention"],
                                rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                                                 "full_attention": {"rope_type": "default", "rope_theta": 10000.0}})
    if arch == "qwen3":  # QK-norm per head, explicit head_dim, sliding layers from max_window_layers on
        return Qwen3Config(**dec, head_dim=24, use_sliding_window=True, sliding_window=TINY_WINDOW,
                           max_window_layers=n_layers // 2)
    if arch == "olmo3":  # OLMo-2's post-norm + sliding layers (3 of every 4)
        return Olmo3Config(**dec, sliding_window=TINY_WINDOW)
    if arch == "olmo":  # non-parametric LayerNorm, q/k/v clamped at clip_qkv
        return OlmoConfig(**dec, clip_qkv=0.2)
    if arch == "mistral":  # every layer sliding
        return MistralConfig(**dec, sliding_window=TINY_WINDOW)
    if arch == "phi3":  # fused qkv_proj and gate_up_proj, partial rotary
        return Phi3Config(**dec, sliding_window=None,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})
    if arch == "gpt_neox":  # parallel residual, partial rotary, interleaved fused qkv, LayerNorm with bias
        return GPTNeoXConfig(hidden_size=d_model, intermediate_size=4 * d_model, num_hidden_layers=n_layers,
                             num_attention_heads=n_heads, max_position_embeddings=256, use_parallel_residual=True,
                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                              "partial_rotary_factor": 0.5}, **common)
    if arch == "starcoder2":  # registered by one line of data: LayerNorm with biases, plain MLP, sliding window
        return Starcoder2Config(**dec, sliding_window=TINY_WINDOW, use_bias=True)
    if arch == "stablelm":  # no adapter: LayerNorm, partial rotary; for the adapter-free analyses
        return StableLmConfig(**dec, partial_rotary_factor=0.5)
    raise ValueError(f"unknown tiny architecture {arch!r}; choose from {ARCHS + NO_ADAPTER_ARCHS}")


_CLASSES = {"olmo2": Olmo2ForCausalLM, "llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM, "gpt2": GPT2LMHeadModel,
            "gemma": GemmaForCausalLM, "gemma2": Gemma2ForCausalLM, "gemma3": Gemma3ForCausalLM,
            "qwen3": Qwen3ForCausalLM, "olmo3": Olmo3ForCausalLM, "olmo": OlmoForCausalLM,
            "mistral": MistralForCausalLM, "phi3": Phi3ForCausalLM, "gpt_neox": GPTNeoXForCausalLM,
            "starcoder2": Starcoder2ForCausalLM, "stablelm": StableLmForCausalLM}

#: Families whose norms compute ``x̂ · (1 + w)``: their HF init is ``w = 0``, randomised around 0, not 1.
_ONE_PLUS_W = ("gemma", "gemma2", "gemma3")


def tiny_model(arch: str, seed: int = 0, attn_implementation: str = "eager", randomise: bool = True,
               **kw) -> PreTrainedModel:
    """A randomly initialised tiny ``arch`` model in eval mode, fp32, deterministic in ``seed``.

    Norm weights and biases are randomised too (HF initialises them to 1 / 0, which would hide bugs
    in code that forgets them); ``randomise=False`` keeps transformers' default init (the state of a model built
    from a config before training: norm weights 1, or 0 for Gemma's ``1 + w``, biases 0).
    """
    torch.manual_seed(seed)
    cfg = tiny_config(arch, **kw)
    cfg._attn_implementation = attn_implementation
    model = _CLASSES[arch](cfg)
    if not randomise:
        return model.eval()
    centre = 0.0 if arch in _ONE_PLUS_W else 1.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name or name.endswith("ln_f.weight") or name.endswith("ln_f.bias"):
                p.copy_(centre + 0.2 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    return model.eval()


def save_tiny_checkpoint(directory, arch: str = "olmo2", **model_kwargs):
    """Save ``tiny_model(arch, **model_kwargs)`` with :func:`tiny_tokenizer` to ``directory`` (a model directory
    any ``load_model`` accepts) and return the directory."""
    tiny_model(arch, **model_kwargs).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory
