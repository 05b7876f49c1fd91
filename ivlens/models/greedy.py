"""Greedy decoding without ``generate``'s per-call and per-step machinery, equal to it token for token.

``transformers``' ``generate(do_sample=False, num_beams=1)`` runs the model's forward with its KV cache one token
at a time; around that, every call validates and copies a generation config and builds logits processors and
stopping criteria, and every step runs them. On the small models ivlens studies that machinery costs about as much
as the forwards. :func:`greedy_generate` runs the same forwards on the same inputs (the left-padded prompt, the
position ids ``generate`` derives from the attention mask, the mask dropped when it is all ones, a
``DynamicCache``, only the last position's logits) and stops when every row has produced EOS or after
``max_new_tokens``, so its tokens and first-step logits are ``generate``'s bit for bit (``tests/eval/test_eval.py``
compares them on every supported family). Where the model's generation config asks for anything the loop does not
do (a logits processor such as a repetition penalty, another cache, a time limit, ...), it calls ``generate``.

>>> seqs, first_logits = greedy_generate(model, input_ids, attention_mask, 8, eos_token_id=0, pad_token_id=1)
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch
from torch import Tensor

#: generation-config fields that make ``generate`` do more than plain greedy decoding with a dynamic cache
_NON_PLAIN = ("repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
              "encoder_no_repeat_ngram_size", "bad_words_ids", "min_length", "min_new_tokens",
              "forced_bos_token_id", "forced_eos_token_id", "exponential_decay_length_penalty", "suppress_tokens",
              "begin_suppress_tokens", "sequence_bias", "guidance_scale", "watermarking_config",
              "renormalize_logits", "remove_invalid_values", "cache_implementation", "prefill_chunk_size",
              "max_time", "stop_strings", "token_healing", "dola_layers", "penalty_alpha",
              "prompt_lookup_num_tokens")


@lru_cache(maxsize=1)
def _plain_config():
    from transformers import GenerationConfig

    return GenerationConfig()


@lru_cache(maxsize=64)
def _forward_params(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def lean_supported(model) -> bool:
    """Whether :func:`greedy_generate` reproduces ``generate`` for ``model``: a decoder-only model with a default
    dynamic cache on the CPU (on an accelerator ``generate`` may switch MoE kernels for decoding), whose generation
    config asks for plain greedy decoding."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False) or model.device.type != "cpu":
        return False
    supports = getattr(model, "_supports_default_dynamic_cache", None)
    if supports is not None and not supports():
        return False
    params = _forward_params(type(model))
    if "cache" not in params and "past_key_values" not in params:
        return False
    gen, plain = getattr(model, "generation_config", None), _plain_config()
    if gen is None:
        return True
    return getattr(gen, "use_cache", True) is not False and all(getattr(gen, f, None) == getattr(plain, f, None) for f in _NON_PLAIN)


@torch.no_grad()
def greedy_generate(model, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int,
                    eos_token_id: int | None, pad_token_id: int | None) -> tuple[Tensor, Tensor]:
    """Greedy continuations of left-padded prompts: ``(sequences [batch, prompt + new], first-step logits
    [batch, d_vocab] float32)``, equal to ``model.generate(input_ids, attention_mask=..., do_sample=False,
    num_beams=1, max_new_tokens=..., eos_token_id=..., pad_token_id=..., return_dict_in_generate=True,
    output_logits=True)``'s ``sequences`` and ``logits[0]`` (rows that ended are filled with ``pad_token_id``).
    Falls back to ``generate`` without an EOS token and where :func:`lean_supported` says the loop would not
    reproduce it."""
    if eos_token_id is None or not lean_supported(model):
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                             do_sample=False, num_beams=1, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                             return_dict_in_generate=True, output_logits=True, temperature=None, top_p=None,
                             top_k=None)
        return out.sequences, out.logits[0].float()
    from transformers import DynamicCache

    params = _forward_params(type(model))
    cache_key = "cache" if "cache" in params else "past_key_values"
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    kwargs: dict = {cache_key: cache, "use_cache": True}
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1
    position_ids = None
    if "position_ids" in params:  # as generate derives them: from the mask, padding at 0
        position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    mask = None if bool((attention_mask == 1).all()) else attention_mask  # generate drops an all-ones mask
    eos = torch.tensor([eos_token_id], device=input_ids.device).flatten()
    if pad_token_id is None:
        pad_token_id = int(eos[0])
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    sequences, step_ids, first = input_ids, input_ids, None
    for _ in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=position_ids, return_dict=True, **kwargs)
        logits = out.logits[:, -1].to(copy=True, dtype=torch.float32)  # [batch, d_vocab]
        first = logits if first is None else first
        next_tokens = torch.argmax(logits, dim=-1)
        next_tokens = next_tokens * unfinished + pad_token_id * (1 - unfinished)
        sequences = torch.cat([sequences, next_tokens[:, None]], dim=-1)
        unfinished = unfinished & ~torch.isin(next_tokens, eos)
        if not bool(unfinished.any()):
            break
        step_ids = next_tokens[:, None]
        if position_ids is not None:
            position_ids = position_ids[:, -1:] + 1
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
    return sequences, first
