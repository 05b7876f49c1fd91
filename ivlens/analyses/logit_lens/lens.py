"""The logit lens of instruction vectors: the maths, tensors in and out.

An IV ``v = resid_post[l][T_inst]: [d_model]`` read as if it were the last layer's residual gives a distribution over
the vocabulary, ``p = softmax(final_softcap(W_U · final_norm(v)))`` (:meth:`ivlens.models.adapters.ArchitectureAdapter.logits`:
the model's own final norm and unembedding, soft-capped where the model caps its logits). How much of ``p`` lies on
the first tokens of the IV's own subtask's labels, against the other subtask's labels, says whether the vector
already points at its answers in the output basis (nostalgebraist's logit lens; the paper's IVs, layer by layer).

Shapes: ``n`` rephrasings, ``d_model``, ``d_vocab``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ivlens.models.adapters import ArchitectureAdapter


@torch.no_grad()
def lens_probs(adapter: ArchitectureAdapter, ivs: torch.Tensor) -> torch.Tensor:
    """``ivs: [n, d_model]`` → ``[n, d_vocab]`` float32 probabilities of the logit lens (rows sum to 1)."""
    return torch.softmax(adapter.logits(ivs).float(), dim=-1).cpu()


def label_mass(probs: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """``probs: [n, d_vocab]`` → ``[n]``: the probability on the token ids ``ids`` (each id counted once)."""
    index = torch.tensor(sorted(set(ids)), dtype=torch.long)
    return probs[:, index].sum(-1)


def top_tokens(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``probs: [n, d_vocab]`` → the ``k`` most probable token ids of the mean distribution and their mean
    probabilities, ``([k], [k])``; ties broken by the lower id, so the order is deterministic."""
    mean = probs.double().mean(0)  # [d_vocab]
    order = np.lexsort((np.arange(mean.numel()), -mean.numpy()))[:k]
    index = torch.from_numpy(order.copy())
    return index, mean[index]
