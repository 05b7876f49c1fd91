"""Metrics of the instructed label at the final position, from logits ``[rows, d_vocab]``.

For a row with logits ``z`` and label token ``y`` (the first token of the instructed answer):

- ``logit = z[y]``; ``prob = softmax(z)[y]``;
- ``rank = 1 + #{v : z[v] > z[y]}`` (1 = top-1; ties count in the label's favour); ``rr = 1 / rank``;
- ``ia_top1``: ``argmax_v z[v] ∈ S``, the top-1 token is the first token of some answer in the subtask's label space
  ``S`` (the top-1 form of the paper's instruction-following accuracy, IA: the model does the instructed subtask;
  eval's ``ia`` is the generated answer's);
- ``acc_top1``: ``argmax_v z[v] == y`` (plain accuracy: the top-1 token is the right answer's);
- ``acc_space``: ``argmax_{v in S} z[v] == y`` (the right answer wins within the label space);
- ``logit_diff = z[y] − z[y_alt]`` where an alternative label exists (the other subtask's answer).

**Answer-level scoring** (``score="answer"``): each candidate label ``c`` (every subtask's label space) is scored
by its teacher-forced log-probability ``s_c = Σ_i log p(c_i | prompt, c_<i)`` (:func:`continuation_logprobs`),
and :func:`answer_metrics` gives the same columns on those scores: ``logit = s_y``, ``prob = exp(s_y)``,
``rank = 1 + #{c : s_c > s_y}``, ``top1`` the best candidate's index, ``ia_top1`` whether it lies in ``S``, and so
on. Labels that share their first token (numbers with many tokenizers) are told apart only this way.

Deltas compare a patched row with the target-only run (``*_vs_target``) and with the instructed run
(``*_vs_instructed``) of the same sample: ``delta = patched − baseline``.
"""

from __future__ import annotations

import torch

METRICS = ("logit", "prob", "rank", "rr", "logit_diff")
DELTA_BASELINES = ("target", "instructed")


def label_metrics(logits: torch.Tensor, label: torch.Tensor, alt: torch.Tensor | None = None,
                  space: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-row metrics of ``label``.

    Args:
        logits: ``[rows, d_vocab]`` (any float dtype; computed in float32).
        label: ``[rows]`` token ids of the instructed label's first token.
        alt: ``[rows]`` token ids of the alternative label (``-1`` where there is none), or ``None``.
        space: ``[k]`` token ids of the label space's first tokens, or ``None``.

    Returns:
        ``logit, prob, rr, logit_diff: [rows]`` float, ``rank, top1: [rows]`` int64, ``ia_top1, acc_top1, acc_space:
        [rows]`` bool (``logit_diff`` NaN without ``alt``; ``ia_top1`` and ``acc_space`` False without ``space``).
    """
    z = logits.float()
    rows = torch.arange(z.shape[0], device=z.device)
    zy = z[rows, label]  # [rows]
    # one pass each over [rows, d_vocab]: the count in int32 (an int64 count is 1.7× slower on CPU), the top-1
    # from max (its index), the log-sum-exp
    rank = 1 + (z > zy[:, None]).sum(-1, dtype=torch.int32).long()
    logp = zy - torch.logsumexp(z, dim=-1)
    top1 = z.max(-1).indices
    out = {"logit": zy, "prob": logp.exp(), "rank": rank, "rr": 1.0 / rank.float(), "top1": top1,
           "acc_top1": top1 == label}
    if alt is not None:
        has = alt >= 0
        za = z[rows, alt.clamp(min=0)]
        out["logit_diff"] = torch.where(has, zy - za, torch.full_like(zy, float("nan")))
    else:
        out["logit_diff"] = torch.full_like(zy, float("nan"))
    if space is not None and space.numel():
        zs = z[:, space]  # [rows, k]
        out["acc_space"] = space[zs.argmax(-1)] == label
        out["ia_top1"] = torch.isin(top1, space)
    else:
        out["acc_space"] = torch.zeros_like(label, dtype=torch.bool)
        out["ia_top1"] = torch.zeros_like(label, dtype=torch.bool)
    return out


def continuation_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Teacher-forced log-probability of each row's continuation, ``Σ_i log softmax(logits[r, i])[tokens[r, i]]``.

    Args:
        logits: ``[rows, tail, d_vocab]``, the logits at the last ``tail`` positions of ``prompt + continuation[:-1]``
            (position ``i`` of the tail predicts continuation token ``i``; the first is the prompt's last token).
        tokens: ``[rows, tail]`` continuation token ids, right-aligned, ``-1`` on the left where a continuation is
            shorter than ``tail``.

    Returns:
        ``[rows]`` float32 sums of log-probabilities.
    """
    logp = logits.float().log_softmax(-1)  # [rows, tail, d_vocab]
    valid = tokens >= 0
    picked = logp.gather(-1, tokens.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # [rows, tail]
    return torch.where(valid, picked, torch.zeros_like(picked)).sum(-1)


def answer_metrics(scores: torch.Tensor, label: torch.Tensor, alt: torch.Tensor | None = None,
                   space: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-row metrics of ``label`` among candidate answers scored by :func:`continuation_logprobs`; the keys and
    dtypes of :func:`label_metrics`.

    Args:
        scores: ``[rows, k]`` log-probability of each of ``k`` candidate labels.
        label: ``[rows]`` index of the instructed label among the candidates.
        alt: ``[rows]`` index of the alternative label (``-1``: none), or ``None``.
        space: ``[k]`` bool, the candidates in the subtask's label space, or ``None`` (all of them).

    Returns:
        ``logit`` (the label's log-probability), ``prob, rr, logit_diff: [rows]`` float; ``rank`` (1 + candidates
        scored strictly higher), ``top1`` (index of the best candidate): ``[rows]`` int64; ``ia_top1`` (the best
        candidate lies in the label space), ``acc_top1`` (the best candidate is the label), ``acc_space`` (the label
        is the best candidate within the label space): ``[rows]`` bool.
    """
    z = scores.float()
    rows = torch.arange(z.shape[0], device=z.device)
    zy = z[rows, label]  # [rows]
    rank = 1 + (z > zy[:, None]).sum(-1).long()
    top1 = z.max(-1).indices
    in_space = torch.ones(z.shape[1], dtype=torch.bool, device=z.device) if space is None else space.to(z.device)
    best_in_space = z.masked_fill(~in_space, float("-inf")).max(-1).indices
    out = {"logit": zy, "prob": zy.exp(), "rank": rank, "rr": 1.0 / rank.float(), "top1": top1,
           "acc_top1": top1 == label, "acc_space": best_in_space == label, "ia_top1": in_space[top1]}
    if alt is not None:
        has = alt >= 0
        out["logit_diff"] = torch.where(has, zy - z[rows, alt.clamp(min=0)], torch.full_like(zy, float("nan")))
    else:
        out["logit_diff"] = torch.full_like(zy, float("nan"))
    return out


def deltas(patched: dict[str, torch.Tensor], baseline: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """``delta_<metric>_vs_<name> = patched[metric] − baseline[metric]`` for every metric in :data:`METRICS`.

    Both dicts hold ``[rows]`` tensors aligned row by row (expand the per-sample baseline first).
    """
    return {f"delta_{m}_vs_{name}": patched[m].float() - baseline[m].float() for m in METRICS}
