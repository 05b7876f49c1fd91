"""THE padding of token-id lists into one batch: every batch ivlens builds by hand is padded here.

Left padding (the real tokens end at the last column, so ``[:, -1]`` is every row's last token) is for running
prompts: :func:`ivlens.tasks.prompts.pad_left` adds the position ids and is what the analyses call (patching,
eval, probing's IV collection, the nnsight programs, answer scoring, the logit lens); the engine's continuations
are left-padded with ``-1`` (:func:`ivlens.tasks.prompts.right_aligned`). Right padding (the real tokens start at
column 0, so a row's labels line up with its ids) is for training: the organism's pretraining rows and its SFT
collator.

>>> p = pad_tokens([[5, 6, 7], [8]], pad_id=0, side="left")
>>> p.input_ids.tolist(), p.attention_mask.tolist(), p.lengths
([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]], (3, 1))
>>> pad_tokens([[5, 6, 7], [8]], pad_id=-100, side="right").input_ids.tolist()
[[5, 6, 7], [8, -100, -100]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

#: where the pad tokens go: ``left`` (before each row's tokens) or ``right`` (after them)
Side = Literal["left", "right"]


@dataclass(frozen=True)
class Padded:
    """A padded batch: ``input_ids, attention_mask: [batch, pos]`` (int64; the mask is 1 on real tokens, 0 on pad
    tokens) and ``lengths[i]``, the number of real tokens of row ``i``; ``pos`` is the longest row's length."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: tuple[int, ...]


def pad_tokens(sequences: Sequence[Sequence[int]], pad_id: int, side: Side) -> Padded:
    """Pad ``sequences`` (token ids, at least one sequence) with ``pad_id`` to the longest one, on ``side``.

    Returns:
        :class:`Padded`: ``input_ids, attention_mask: [len(sequences), max length]`` and the lengths.
    """
    if side not in get_args(Side):
        raise ValueError(f"side must be one of {', '.join(get_args(Side))} (got {side!r})")
    lengths = tuple(len(s) for s in sequences)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for i, (s, n) in enumerate(zip(sequences, lengths, strict=True)):
        real = slice(width - n, width) if side == "left" else slice(0, n)
        ids[i, real] = torch.as_tensor(s, dtype=torch.long)
        mask[i, real] = 1
    return Padded(ids, mask, lengths)
