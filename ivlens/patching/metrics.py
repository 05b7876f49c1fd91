"""Metrics of the instructed label at the final position, from logits ``[rows, d_vocab]``.

For a row with logits ``z`` and label token ``y`` (the first token of the instructed answer):

- ``logit = z[y]``; ``prob = softmax(z)[y]``;
- ``rank = 1 + #{v : z[v] > z[y]}`` (1 = top-1; ties count in the label's favour); ``rr = 1 / rank``;
- ``ia``: ``argmax_v z[v] ∈ S``, the top-1 token is the first token of some answer in the subtask's label space
  ``S`` (the paper's instruction-following accuracy, IA: the model does the instructed subtask);
- ``acc_top1``: ``argmax_v z[v] == y`` (plain accuracy: the top-1 token is the right answer's);
- ``acc_space``: ``argmax_{v in S} z[v] == y`` (the right answer wins within the label space);
- ``logit_diff = z[y] − z[y_alt]`` where an alternative label exists (the other subtask's answer).

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
        ``logit, prob, rr, logit_diff: [rows]`` float, ``rank, top1: [rows]`` int64, ``ia, acc_top1, acc_space: [rows]``
        bool (``logit_diff`` NaN without ``alt``; ``ia`` and ``acc_space`` False without ``space``).
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
        out["ia"] = torch.isin(top1, space)
    else:
        out["acc_space"] = torch.zeros_like(label, dtype=torch.bool)
        out["ia"] = torch.zeros_like(label, dtype=torch.bool)
    return out


def deltas(patched: dict[str, torch.Tensor], baseline: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """``delta_<metric>_vs_<name> = patched[metric] − baseline[metric]`` for every metric in :data:`METRICS`.

    Both dicts hold ``[rows]`` tensors aligned row by row (expand the per-sample baseline first).
    """
    return {f"delta_{m}_vs_{name}": patched[m].float() - baseline[m].float() for m in METRICS}
