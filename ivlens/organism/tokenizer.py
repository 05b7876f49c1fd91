"""The organism's tokenizer: a byte-level BPE trained with ``tokenizers`` on the organism's own corpus.

Properties the rest of ivlens relies on:

- ``PreTrainedTokenizerFast`` with character offsets (``return_offsets_mapping``), so prompt builders can
  find ``T_inst`` (the last token of the instruction) from character spans;
- a BOS token ``<|bos|>`` that the post-processor puts at position 0 of every encoded text
  (``tokenizer("x").input_ids[0] == bos_token_id``), eos ``<|endoftext|>`` and pad ``<|pad|>``;
- a chat template. It renders the BOS itself (chat templates are tokenised with
  ``add_special_tokens=False``), a user turn as ``<|user|>\\n{content}\\n`` and an assistant turn as
  ``<|assistant|> {content}<|endoftext|>``; the generation prompt ends with ``<|assistant|>``, so the answer
  follows after a single space, exactly as in the raw format ``... Answer: {label}``;
- every task word (queries and labels) is boosted in the training iterator so that it becomes one token
  with its leading space (`` small``): first-token metrics are then exact. :func:`single_token_share`
  reports how many made it.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, USER, ASSISTANT, SYSTEM = (
    "<|bos|>", "<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>",
)
SPECIAL_TOKENS = [EOS, PAD, BOS, USER, ASSISTANT, SYSTEM]  # ids 0..5: eos=0, pad=1, bos=2

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|assistant|> {{ m['content'] }}<|endoftext|>"
    "{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

#: how many extra times each task word is shown to the BPE trainer, so that it earns its own merge chain
WORD_BOOST = 40


def train_tokenizer(texts: Iterable[str], words: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on ``texts`` plus ``WORD_BOOST`` copies of each ``" " + word``.

    Deterministic: the ``tokenizers`` BPE trainer breaks frequency ties by the pair's bytes.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    boosted = [" " + w for w in sorted(set(words))] * WORD_BOOST
    tok.train_from_iterator(list(texts) + boosted, trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]),
    ])
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a trained ``tokenizers.Tokenizer`` with the special tokens and the chat template."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=[USER, ASSISTANT, SYSTEM],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    return fast


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """Token ids of ``text`` with exactly one BOS at position 0 (whether or not ``text`` starts with it)."""
    if text.startswith(tokenizer.bos_token):
        return tokenizer(text, add_special_tokens=False).input_ids
    return tokenizer(text).input_ids


def single_token_share(tokenizer: PreTrainedTokenizerFast, words: Iterable[str]) -> float:
    """Share of ``words`` whose ``" " + word`` is a single token."""
    words = sorted(set(words))
    ok = sum(len(tokenizer(" " + w, add_special_tokens=False).input_ids) == 1 for w in words)
    return ok / max(len(words), 1)
