"""Prompt rendering and T_inst from offsets, on tokenizers that treat spaces differently."""

from __future__ import annotations

import copy

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ivlens.tasks import (
    build_prompt,
    instructed_prompt,
    instruction_prompt,
    label_token_ids,
    load_task,
    pad_left,
)
from ivlens.tasks.padding import pad_tokens
from ivlens.tasks.prompts import right_aligned
from ivlens.testing.tiny import _CORPUS, CHAT_TEMPLATE, tiny_tokenizer

INSTR = "Given an adjective, state its antonym."


def metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """SentencePiece-style: the space before a word becomes '▁' glued to the word."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(_CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>", "<s>"]))
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", bos_token="<s>", unk_token="<unk>",
                                  pad_token="</s>")
    out.chat_template = CHAT_TEMPLATE
    return out


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace/punctuation split: spaces belong to no token."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(_CORPUS, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"]))
    out = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[PAD]")
    out.chat_template = CHAT_TEMPLATE
    return out


TOKENIZERS = {"bytelevel": tiny_tokenizer, "metaspace": metaspace_tokenizer, "wordlevel": word_tokenizer}


@pytest.fixture(params=list(TOKENIZERS))
def any_tok(request):
    return TOKENIZERS[request.param]()


def _covered_text(tok, prompt, upto: int) -> str:
    """Characters of the prompt text covered by tokens [0, upto] (from an independent encode)."""
    enc = tok(prompt.text, add_special_tokens=prompt.add_special_tokens, return_offsets_mapping=True)
    ends = [b for a, b in enc["offset_mapping"][: upto + 1] if b > a]
    return prompt.text[: max(ends)]


@pytest.mark.parametrize("fmt", ["raw", "chat"])
def test_t_inst_is_the_instructions_last_token(any_tok, fmt):
    p = build_prompt(any_tok, INSTR, "big", "Adjective", fmt)
    covered = _covered_text(any_tok, p, p.t_inst)
    assert covered.rstrip().endswith("antonym.") or covered.rstrip().endswith(".")
    assert INSTR in covered
    # the next token starts at or after the instruction's end
    before = _covered_text(any_tok, p, p.t_inst - 1)
    assert not before.rstrip().endswith(INSTR)
    # the instruction-only prompt is a prefix of the instructed prompt and ends at T_inst
    src = instruction_prompt(any_tok, INSTR, fmt)
    assert src.t_inst == len(src) - 1 == p.t_inst
    assert p.input_ids[: len(src)] == src.input_ids


def test_raw_text_is_the_papers_format(tok):
    t = load_task("adjectives")
    p = instructed_prompt(tok, t, t.samples[0], INSTR)
    assert p.text == "Given an adjective, state its antonym. Adjective: big. Answer:"
    assert build_prompt(tok, None, "big", "Adjective").text == "Adjective: big. Answer:"
    assert build_prompt(tok, None, "big", "Adjective", query_style="bare").text == "big"
    assert build_prompt(tok, INSTR, "Is it?", "Q").text.endswith("Q: Is it? Answer:")  # no doubled punctuation


def test_chat_prompt_uses_template_and_prefill(tok):
    p = build_prompt(tok, INSTR, "big", "Adjective", "chat", prefill="Answer:")
    assert p.text.startswith("<|user|>\n" + INSTR + " Adjective: big.") and p.text.endswith("<|assistant|>\nAnswer:")
    assert p.answer_sep == " " and not p.add_special_tokens
    q = build_prompt(tok, INSTR, "big", "Adjective", "chat")
    assert q.answer_sep == ""


def test_chat_answer_separator_comes_from_the_template(tok):
    from ivlens.organism.tokenizer import CHAT_TEMPLATE as ORGANISM_TEMPLATE
    from ivlens.tasks.prompts import chat_answer_separator

    assert chat_answer_separator(tok) == ""  # "<|assistant|>\n{content}"
    tok.chat_template = ORGANISM_TEMPLATE  # "<|assistant|> {content}<|endoftext|>"
    tok.bos_token = "<|endoftext|>"
    assert chat_answer_separator(tok) == " "
    p = build_prompt(tok, INSTR, "big", "Adjective", "chat")
    assert p.text.endswith("<|assistant|>") and p.answer_sep == " "
    assert label_token_ids(tok, p, "small") == tuple(tok(" small", add_special_tokens=False)["input_ids"])
    # a template that refuses an assistant turn: no separator assumed
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ raise_exception('no') }}"
                         "{% endif %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}A:{% endif %}")
    assert chat_answer_separator(tok) == ""


def test_label_tokens_in_context(any_tok):
    p = build_prompt(any_tok, INSTR, "big", "Adjective")
    ids = label_token_ids(any_tok, p, "small")
    joint = any_tok(p.text + " small", add_special_tokens=True)["input_ids"]
    assert tuple(joint[len(p.input_ids):]) == ids


def test_label_space_first_ids_are_computed_once_per_tokenizer_and_prompt_ending(any_tok, monkeypatch):
    """The cached first-token ids equal the direct computation; a second load of the same tokenizer (another
    checkpoint's copy) shares them; another tokenizer does not."""
    import ivlens.tasks.prompts as prompts

    labels = ["small", "sad", "cold", "small"]
    p = build_prompt(any_tok, INSTR, "big", "Adjective")
    direct = sorted({ids[0] for ids in prompts.labels_token_ids(any_tok, p, labels)})
    calls = []
    counted = prompts.labels_token_ids
    monkeypatch.setattr(prompts, "labels_token_ids", lambda *a: calls.append(a) or counted(*a))
    monkeypatch.setattr(prompts, "_space_first_ids", type(prompts._space_first_ids)())
    assert prompts.label_space_first_ids(any_tok, p, labels) == direct
    same = copy.deepcopy(any_tok)  # equal files, another object: as base, SFT and DPO load theirs
    assert prompts.tokenizer_fingerprint(same) == prompts.tokenizer_fingerprint(any_tok) is not None
    assert prompts.label_space_first_ids(same, p, labels) == direct and len(calls) == 1
    other = next(t for t in (make() for make in TOKENIZERS.values())
                 if prompts.tokenizer_fingerprint(t) != prompts.tokenizer_fingerprint(any_tok))
    prompts.label_space_first_ids(other, build_prompt(other, INSTR, "big", "Adjective"), labels)
    assert len(calls) == 2


def test_pad_left_positions_and_columns(tok):
    a = build_prompt(tok, INSTR, "big", "Adjective")
    b = build_prompt(tok, None, "big", "Adjective")
    batch = pad_left([a, b], tok.pad_token_id)
    assert batch.input_ids.shape == (2, len(a))
    assert batch.pad == (0, len(a) - len(b))
    assert batch.attention_mask[1].sum() == len(b)
    assert batch.position_ids[1, -1] == len(b) - 1 and batch.position_ids[0, -1] == len(a) - 1
    assert batch.input_ids[1, batch.column(1, 0)] == b.input_ids[0]
    assert batch.column(0, a.t_inst) == a.t_inst
    assert torch.equal(batch.input_ids[:, -1], torch.tensor([a.input_ids[-1], b.input_ids[-1]]))


@pytest.mark.parametrize("side", ["left", "right"])
def test_pad_tokens_matches_torchs_pad_sequence(side):
    """The one padding helper against torch's own ``pad_sequence`` (with an empty row and a pad id that also occurs
    as a real token: the mask comes from the lengths, never from comparing ids with the pad id)."""
    from torch.nn.utils.rnn import pad_sequence

    rows = [[5, 1, 7], [8], [], [3, 4, 1, 1, 9]]
    got = pad_tokens(rows, 1, side)
    tensors = [torch.tensor(r, dtype=torch.long) for r in rows]
    assert got.input_ids.dtype == got.attention_mask.dtype == torch.long and got.lengths == (3, 1, 0, 5)
    assert torch.equal(got.input_ids, pad_sequence(tensors, batch_first=True, padding_value=1, padding_side=side))
    ones = [torch.ones(len(r), dtype=torch.long) for r in rows]
    assert torch.equal(got.attention_mask, pad_sequence(ones, batch_first=True, padding_value=0, padding_side=side))
    with pytest.raises(ValueError, match="side must be one of left, right"):
        pad_tokens(rows, 1, "both")


def test_right_aligned_continuations_are_left_padded_with_minus_one():
    assert right_aligned([(4, 5), (6,), (7, 8, 9)]).tolist() == [[-1, 4, 5], [-1, -1, 6], [7, 8, 9]]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["raw", "chat"])
def test_t_inst_on_smollm2_tokenizer(fmt):
    """A real tokenizer (byte-level BPE with a system-prompt chat template)."""
    from transformers import AutoTokenizer

    from ivlens.models.load import smollm2_gguf

    g = smollm2_gguf()
    real = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
    p = build_prompt(real, INSTR, "big", "Adjective", fmt)
    assert real.convert_ids_to_tokens(p.input_ids[p.t_inst]) == "."
    assert INSTR in _covered_text(real, p, p.t_inst)
    assert INSTR not in _covered_text(real, p, p.t_inst - 1)
    src = instruction_prompt(real, INSTR, fmt)
    assert p.input_ids[: len(src)] == src.input_ids and src.t_inst == len(src) - 1
