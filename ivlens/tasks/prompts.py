"""Prompts in the paper's raw format and in chat format, with T_inst computed from token offsets.

Raw format (the paper's)::

    instructed        "{instruction} {Field}: {query}. Answer:"      answer follows after " "
    instruction-only  "{instruction}"
    query-only        "{Field}: {query}. Answer:"   (query_style="formatted")
                      "{query}"                      (query_style="bare", the paper's default target)

Chat format: the user turn ``"{instruction} {Field}: {query}."`` through the tokenizer's chat template with
the generation prompt, plus an optional assistant prefill. The chat instruction-only prompt is the chat
prompt cut right after the instruction, so its tokens are a prefix of the instructed prompt's tokens and
its last token is T_inst in both.

**T_inst** is the index of the token holding the instruction's last character, found from the tokenizer's
offset mapping (never by counting words), so it is right for tokenizers that merge the space before a word
into the next token (byte-level BPE: ``" Adjective"``) and for SentencePiece ones alike.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from .padding import pad_tokens
from .schema import Sample, Task, TaskError

log = logging.getLogger(__name__)

PromptFormat = Literal["raw", "chat"]
QueryStyle = Literal["bare", "formatted"]
PromptKind = Literal["instructed", "instruction_only", "query_only"]


@dataclass(frozen=True)
class Prompt:
    """A tokenised prompt.

    ``input_ids``: the token ids fed to the model (special tokens included); ``t_inst``: index of the
    instruction's last token (``None`` without instruction); ``answer_sep``: the text between the prompt
    and the answer (``" "`` in raw format).
    """

    text: str
    input_ids: tuple[int, ...]
    t_inst: int | None
    answer_sep: str
    kind: PromptKind
    fmt: PromptFormat
    add_special_tokens: bool

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def last(self) -> int:
        return len(self.input_ids) - 1


def _query_text(field: str, query: str) -> str:
    """``"{Field}: {query}."``, without doubling a final punctuation mark of the query."""
    end = "" if query.rstrip()[-1:] in ".?!" else "."
    return f"{field}: {query}{end}"


def _render(tokenizer: PreTrainedTokenizerBase, instruction: str | None, query: str | None, field: str,
            fmt: PromptFormat, query_style: QueryStyle, prefill: str | None
            ) -> tuple[str, tuple[int, int] | None, str, bool, PromptKind]:
    """Text, instruction character span, answer separator, add_special_tokens, kind."""
    if instruction is None and query is None:
        raise ValueError("a prompt needs an instruction, a query, or both")
    kind: PromptKind = ("instructed" if instruction is not None and query is not None
                        else "instruction_only" if instruction is not None else "query_only")
    if fmt == "raw":
        if kind == "instructed":
            text = f"{instruction} {_query_text(field, query)} Answer:"
        elif kind == "instruction_only":
            text = instruction
        else:
            text = f"{_query_text(field, query)} Answer:" if query_style == "formatted" else query
        span = (0, len(instruction)) if instruction is not None else None
        return text, span, " ", True, kind
    if fmt != "chat":
        raise ValueError(f"unknown prompt format {fmt!r}; use 'raw' or 'chat'")
    if getattr(tokenizer, "chat_template", None) is None:
        raise TaskError("this tokenizer has no chat template; use --format raw, or set tokenizer.chat_template")
    if kind == "query_only" and query_style == "bare":
        content = query
    elif kind == "instruction_only":
        content = instruction
    else:
        content = " ".join(x for x in (instruction, _query_text(field, query) if query is not None else None) if x)
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    span = None
    if instruction is not None:
        start = text.find(content)
        if start < 0:
            raise TaskError("the chat template changed the user message; T_inst cannot be located from offsets")
        span = (start, start + len(instruction))
    if kind == "instruction_only":
        text = text[: span[1]]  # a prefix of the instructed chat prompt, ending at T_inst
        return text, span, " ", False, kind
    if prefill:
        text += prefill
        sep = "" if prefill.endswith((" ", "\n")) else " "
    else:
        sep = chat_answer_separator(tokenizer)
    return text, span, sep, False, kind


def chat_answer_separator(tokenizer: PreTrainedTokenizerBase) -> str:
    """The text a chat template puts between its generation prompt and the assistant's content.

    Found by rendering a conversation with an assistant turn ``"§"`` and the same conversation's generation
    prompt: the assistant content starts right after ``sep``. ``""`` for OLMo-2/Llama-style templates
    (``<|assistant|>\\n`` then the content); ``" "`` for templates that write ``<|assistant|> {content}``.
    Falls back to ``""`` when the two renderings do not line up (unusual templates).
    """
    user = [{"role": "user", "content": "x"}]
    marker = "\u00a7"
    try:
        prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": marker}], tokenize=False)
    except (TemplateError, ValueError, KeyError, TypeError):  # cannot render an assistant turn: no separator
        return ""
    if not full.startswith(prompt) or marker not in full[len(prompt):]:
        return ""
    sep = full[len(prompt):full.index(marker, len(prompt))]
    return sep if sep.strip() == "" else ""


def find_t_inst(offsets: list[tuple[int, int]], span: tuple[int, int]) -> int:
    """Index of the last token whose characters start inside the instruction span ``[start, end)``.

    Special tokens (empty offsets) are skipped. Logs a warning when that token runs past the instruction
    (a tokenizer merged the instruction's end with what follows).
    """
    start, end = span
    best = None
    for i, (a, b) in enumerate(offsets):
        if b > a and a < end and b > start:
            best = i
    if best is None:
        raise TaskError("no token covers the instruction; is the instruction empty?")
    if offsets[best][1] > end:
        log.warning("the instruction's last token %d spans past the instruction (chars %s, instruction ends at %d)",
                    best, offsets[best], end)
    return best


def build_prompt(tokenizer: PreTrainedTokenizerBase, instruction: str | None = None, query: str | None = None,
                 field: str = "", fmt: PromptFormat = "raw", query_style: QueryStyle = "formatted",
                 prefill: str | None = None) -> Prompt:
    """Render and tokenise one prompt; T_inst from the offset mapping (see the module docstring)."""
    text, span, sep, special, kind = _render(tokenizer, instruction, query, field, fmt, query_style, prefill)
    enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    ids = tuple(enc["input_ids"])
    t_inst = find_t_inst([tuple(o) for o in enc["offset_mapping"]], span) if span is not None else None
    return Prompt(text, ids, t_inst, sep, kind, fmt, special)


def instructed_prompt(tokenizer, task: Task, sample: Sample, instruction: str, fmt: PromptFormat = "raw",
                      prefill: str | None = None) -> Prompt:
    return build_prompt(tokenizer, instruction, sample.query, task.field, fmt, prefill=prefill)


def instruction_prompt(tokenizer, instruction: str, fmt: PromptFormat = "raw") -> Prompt:
    return build_prompt(tokenizer, instruction, None, "", fmt)


def query_prompt(tokenizer, task: Task, sample: Sample, fmt: PromptFormat = "raw",
                 query_style: QueryStyle = "formatted", prefill: str | None = None) -> Prompt:
    return build_prompt(tokenizer, None, sample.query, task.field, fmt, query_style, prefill)


def label_token_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, label: str) -> tuple[int, ...]:
    """Token ids of ``label`` as the model would produce it after ``prompt`` (after ``answer_sep``).

    Computed as the tokens of ``prompt + sep + label`` beyond the prompt's own tokens, so tokenizers that
    merge the separating space into the label's first token are handled; falls back to tokenising
    ``sep + label`` alone where the prompt's tokens are not a prefix of the joint encoding.
    """
    return labels_token_ids(tokenizer, prompt, [label])[0]


def labels_token_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, labels: Sequence[str]
                     ) -> list[tuple[int, ...]]:
    """:func:`label_token_ids` of every label in ``labels``, from one batched tokenizer call (the same ids as one
    call per label: a fast tokenizer encodes the batch without a Python round trip per label)."""
    if not labels:
        return []
    joint = tokenizer([prompt.text + prompt.answer_sep + lab for lab in labels],
                      add_special_tokens=prompt.add_special_tokens)["input_ids"]
    n = len(prompt.input_ids)
    out = []
    for label, ids in zip(labels, joint, strict=True):
        if tuple(ids[:n]) == prompt.input_ids and len(ids) > n:
            out.append(tuple(ids[n:]))
        else:
            out.append(tuple(tokenizer(prompt.answer_sep + label, add_special_tokens=False)["input_ids"]))
    return out


#: characters of a prompt's end that decide how a label after it is tokenized (the tokenizer's merge context)
LABEL_CONTEXT_CHARS = 24
#: label spaces' first-token ids kept by :func:`label_space_first_ids` (least recently used dropped first)
SPACE_IDS_CACHE_SIZE = 65536
_space_first_ids: OrderedDict[tuple, tuple[int, ...]] = OrderedDict()
_fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """A hash of everything that decides how a fast ``tokenizer`` encodes text (its serialised pipeline:
    normaliser, pre-tokenizer, model, post-processor, added tokens): equal for two loads of the same files, such as
    an organism's three stages, so their encodings can be shared. ``None`` for a slow tokenizer (nothing to hash:
    its encodings are not shared)."""
    fingerprint = _fingerprints.get(tokenizer)
    if fingerprint is None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        fingerprint = hashlib.sha256(backend.to_str().encode()).hexdigest()
        _fingerprints[tokenizer] = fingerprint
    return fingerprint


def label_space_first_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, labels: Sequence[str]) -> list[int]:
    """The distinct first-token ids (sorted) of ``labels`` as the model answers them after ``prompt``
    (:func:`labels_token_ids`; a label that adds no token is left out).

    The first token of a label depends on the prompt only through its last :data:`LABEL_CONTEXT_CHARS` characters
    (the tokenizer's merge context), so for a fast tokenizer it is computed once per prompt ending, separator and
    tokenizer (:func:`tokenizer_fingerprint`) and shared by every later call: an evaluation of three checkpoints
    with one tokenizer tokenizes each label space once per query instead of once per query and checkpoint.
    """
    fingerprint = tokenizer_fingerprint(tokenizer)
    key = None if fingerprint is None else (fingerprint, prompt.text[-LABEL_CONTEXT_CHARS:], prompt.answer_sep,
                                            prompt.add_special_tokens, tuple(labels))
    if key in _space_first_ids:
        _space_first_ids.move_to_end(key)
        return list(_space_first_ids[key])  # a copy: a caller's change cannot reach the cache
    ids = tuple(sorted({t[0] for t in labels_token_ids(tokenizer, prompt, labels) if t}))
    if key is not None:
        _space_first_ids[key] = ids
        if len(_space_first_ids) > SPACE_IDS_CACHE_SIZE:
            _space_first_ids.popitem(last=False)
    return list(ids)


@dataclass(frozen=True)
class AnswerCandidates:
    """Answer-level scoring's candidates: every label of every subtask (the subtask's own label space first);
    ``in_space: [k]`` bool marks the scored subtask's label space."""

    labels: tuple[str, ...]
    in_space: torch.Tensor

    @classmethod
    def of(cls, task: Task, subtask: str) -> AnswerCandidates:
        def labels_of(name: str) -> tuple[str, ...]:
            return tuple(task.subtask(name).label_space) + tuple(a for s in task.samples for a in s.answers[name])

        own = tuple(dict.fromkeys(labels_of(subtask)))
        others = tuple(dict.fromkeys(x for n in task.subtask_names if n != subtask for x in labels_of(n)
                                     if x not in own))
        mask = torch.tensor([True] * len(own) + [False] * len(others))
        return cls(own + others, mask)

    def index(self, label: str | None) -> int:
        return self.labels.index(label) if label is not None else -1


def right_aligned(continuations: Sequence[Sequence[int]]) -> torch.Tensor:
    """``[n, longest]`` token ids, each continuation right-aligned, ``-1`` on the left (the engine's layout)."""
    return pad_tokens(continuations, -1, "left").input_ids


@dataclass(frozen=True)
class Batch:
    """Left-padded batch. ``input_ids, attention_mask, position_ids: [batch, pos]``; ``pad[i]`` is the
    number of pad tokens of row i, so token j of prompt i sits at column ``pad[i] + j``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    pad: tuple[int, ...]

    def column(self, row: int, pos: int) -> int:
        """Batch column of token ``pos`` (negative counts from the end) of prompt ``row``."""
        width = self.input_ids.shape[1]
        return pos + width if pos < 0 else self.pad[row] + pos

    def to(self, device) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device), self.pad)


def pad_left(sequences: list[tuple[int, ...]] | list[Prompt], pad_id: int) -> Batch:
    """Left-pad token sequences (:func:`~ivlens.tasks.padding.pad_tokens`); position ids count real tokens only (so
    absolute-position models such as GPT-2 see the same positions as unpadded)."""
    padded = pad_tokens([s.input_ids if isinstance(s, Prompt) else tuple(s) for s in sequences], pad_id, "left")
    width = padded.input_ids.shape[1]
    pos = (padded.attention_mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(padded.input_ids, padded.attention_mask, pos, tuple(width - n for n in padded.lengths))
