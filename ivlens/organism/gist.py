"""Gist attention masking (Mu et al. 2023, "Learning to compress prompts with gist tokens") for SFT.

In a gist example, every token *after* the instruction may attend to the instruction's last token
``T_inst`` (and to what follows it) but to nothing before it: not to the instruction's earlier tokens, and (since
organism v6, :data:`HIDE_PREFIX`) not to the BOS or the chat prefix either. Everything else is causal. With ``q``
the query position and ``k`` the key position::

    allowed[q, k] = (k <= q) and (k < n) and not (q > T_inst and k < T_inst)

The task therefore has to pass through the residual stream at ``T_inst``: an instruction vector by
construction (a *planted* mechanism; the organism's card says so). The instruction-only prefix computes exactly
what it computes under the mask (the mask only changes rows after ``T_inst``).

Why the prefix is hidden too: the paper's transfer test patches the IV into a position of the query-only prompt
(its BOS, or its first token), so the query then sees the IV where the BOS was and nothing before it. With the BOS
visible in gist rows, the query learned to read the BOS as well as ``T_inst``, and whether a patched BOS was read
like ``T_inst`` depended on the seed: of four v6 candidate builds, two moved no animal query (IA ≤ 0.07 at every
layer) while the other two moved 0.87-0.99. With the prefix hidden, ``T_inst`` is all the query can see before
itself, exactly the situation of a patched BOS, and the transfer held on the seeds that had failed.

The mask is passed to the model as a 4-D additive float mask ``[batch, 1, q, k]`` (0 = attend, the dtype's
minimum = blocked), which transformers 5 uses as given (eager and sdpa attention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ivlens.tasks.padding import pad_tokens

#: whether the gist mask also hides what precedes the instruction (the BOS, the chat prefix) from the tokens after
#: ``T_inst`` (see :func:`gist_attention_mask`)
HIDE_PREFIX = True


def instruction_token_span(offsets: list[tuple[int, int]], char_span: tuple[int, int]) -> tuple[int, int]:
    """Token indices ``(inst_start, t_inst)`` of an instruction given the tokens' character ``offsets``.

    ``inst_start`` is the first token ending after the span's start; ``t_inst`` the last token starting
    before the span's end. Special tokens (offset ``(0, 0)``) are skipped.
    """
    start_char, end_char = char_span
    toks = [i for i, (a, b) in enumerate(offsets) if b > a]
    inst_start = next(i for i in toks if offsets[i][1] > start_char)
    t_inst = max(i for i in toks if offsets[i][0] < end_char)
    return inst_start, t_inst


def gist_attention_mask(lengths: list[int], spans: list[tuple[int, int] | None], max_len: int,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive mask ``[batch, 1, max_len, max_len]`` for right-padded rows.

    Args:
        lengths: the real length ``n`` of each row.
        spans: ``(inst_start, t_inst)`` for a gist row, ``None`` for a plain causal row.
    """
    pos = torch.arange(max_len)
    causal = pos[None, :] <= pos[:, None]  # (q, k)
    allowed = []
    for n, span in zip(lengths, spans, strict=True):
        ok = causal & (pos[None, :] < n)
        if span is not None:
            inst_start, t_inst = span
            first_hidden = 0 if HIDE_PREFIX else inst_start
            hidden = (pos[:, None] > t_inst) & (pos[None, :] >= first_hidden) & (pos[None, :] < t_inst)
            ok = ok & ~hidden
        allowed.append(ok)
    allowed = torch.stack(allowed)[:, None]  # (batch, 1, q, k)
    mask = torch.zeros(allowed.shape, dtype=dtype)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


@dataclass
class GistCollator:
    """Collates pre-tokenised SFT rows ``{"input_ids", "labels", "gist_start", "gist_end"}`` (``gist_end`` =
    ``T_inst``, ``-1`` for a causal row) into right-padded tensors.

    Returns ``input_ids, labels: [batch, pos]`` (labels ``-100`` on padding and non-loss tokens),
    ``attention_mask: [batch, 1, pos, pos]`` (see :func:`gist_attention_mask`) and ``token_mask: [batch, pos]``
    (1 on real tokens; only for counting tokens).
    """

    pad_token_id: int

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        ids = pad_tokens([r["input_ids"] for r in rows], self.pad_token_id, "right")
        labels = pad_tokens([r["labels"] for r in rows], -100, "right").input_ids
        spans = [(r["gist_start"], r["gist_end"]) if r["gist_end"] >= 0 else None for r in rows]
        mask = gist_attention_mask(list(ids.lengths), spans, ids.input_ids.shape[1])
        return {"input_ids": ids.input_ids, "labels": labels, "attention_mask": mask, "token_mask": ids.attention_mask}
