"""What a command's dry-run cost estimate is computed from: the models' sizes and tokenizers, the samples the
command will pick, and the working memory it may use. Each analysis's ``dry_run`` module
(``ivlens.<analysis>.dry_run``) builds its cost estimate from these; :mod:`ivlens.estimate.costs` turns the counts
into FLOPs, memory and time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ivlens.budget import parse_bytes, resolve_memory_budget
from ivlens.tasks.selection import select_samples, split_queries

from .costs import CostEstimate, add_startup
from .model import ModelInfo, model_info

log = logging.getLogger(__name__)


def model_infos(models: Sequence[str], gguf_file: str | None = None, revision: str | None = None,
                trust_remote_code: bool = False, require_adapter: bool = False) -> list[ModelInfo]:
    """:func:`~ivlens.estimate.model.model_info` of each model (configs and tokenizers, no weights)."""
    return [model_info(m, gguf_file=gguf_file, revision=revision, trust_remote_code=trust_remote_code,
                       require_adapter=require_adapter) for m in models]


def with_startup(cost: CostEstimate, info: ModelInfo, dtype: str = "float32", first: bool = True) -> CostEstimate:
    """The tokenizer note, and the cost of starting the process (``first`` estimate only) and loading the model."""
    if info.tokenizer_note:
        cost.notes.insert(0, info.tokenizer_note)
    return add_startup(cost, info.shape, dtype, imports=first, gguf=info.gguf)


def here(device: str) -> str:
    """``device``, or the CPU when it is a GPU this machine does not have (a GPU run planned on a laptop; the
    printed estimate says it was timed on the CPU)."""
    return "cpu" if str(device).startswith("cuda") and not torch.cuda.is_available() else device


#: the working memory a dry run assumes for a GPU it cannot see (half of an 80 GB card's free memory, the default
#: share ``resolve_memory_budget`` takes on a real one); ``--memory-budget`` sizes for another card
ABSENT_GPU_BUDGET = 40 << 30


def dry_run_budget(memory_budget, device: str) -> int:
    """The working memory a command would take on ``device`` (``--memory-budget``, or its default share); a GPU
    this machine lacks is sized at :data:`ABSENT_GPU_BUDGET`."""
    if here(device) != device and str(device).startswith("cuda"):
        if memory_budget is not None and str(memory_budget).strip().lower() != "auto":
            return parse_bytes(memory_budget)
        log.warning("--device %s is not on this machine: sizing for a working memory of %d GiB (half of an 80 GB "
                    "GPU); pass --memory-budget to size for another card", device, ABSENT_GPU_BUDGET >> 30)
        return ABSENT_GPU_BUDGET
    return resolve_memory_budget(memory_budget, device)


def chosen_samples(task, samples, seed: int, split: str, info: ModelInfo) -> list:
    """The samples the command will run on ``info``'s model: the one seeded selector
    (:func:`ivlens.tasks.selection.select_samples`) within ``split``'s queries, read from the organism's card as
    the command does, or, for a model not built yet, from ``info.split`` (an organism's recipe: the fixed split its
    build will record)."""
    queries = None
    if split != "all":
        if info.split is not None:  # a model not built yet (e.g. ivlens.organism.dry_run.organism_recipe_info)
            queries = info.split(task)[split]
        else:
            queries = split_queries(info.path, info.name, task, split)
    return select_samples(task, samples, seed, queries)
