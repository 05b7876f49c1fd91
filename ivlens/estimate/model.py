"""A model's sizes without its weights: ``config.json`` (or a GGUF header) and meta-device parameters.

:func:`model_info` reads the config, builds the model under ``torch.device("meta")`` (shapes only, no memory,
no weights read), checks that an architecture adapter exists, and loads the tokenizer when the directory has
one. Without a tokenizer, :class:`ApproxTokenizer` stands in: one token per punctuation mark and per started
:data:`CHARS_PER_TOKEN` letters of a word (what BPE vocabularies of 50k–100k entries give on the tasks'
English: within ±20 % of SmolLM2's tokenizer), so prompt lengths are estimates and the cost estimate says so.

>>> info = model_info("tests/data/olmo2-0425-1b-config")   # a directory holding only config.json
>>> info.shape.n_layers, info.shape.d_model, info.tokenizer_note
(16, 2048, 'no tokenizer in ...: prompt lengths estimated (1 token per word of up to 6 letters, ...)')
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ivlens.budget import resolve_memory_budget

from .costs import probe_batch_size
from .flops import ModelShape

#: Letters of a word per token assumed without the model's tokenizer (English, BPE vocabularies of 50k–100k).
CHARS_PER_TOKEN = 6


class ApproxTokenizer:
    """Stands in for a missing tokenizer in dry runs: a word is one token per started ``CHARS_PER_TOKEN``
    letters (a leading space joins it), a punctuation mark one token; offsets like a fast tokenizer, a BOS token
    when the config names one.

    Only what the prompt builders of :mod:`ivlens.tasks.prompts` call in the raw format is provided.
    """

    chat_template = None
    padding_side = "left"

    def __init__(self, bos_token_id: int | None = None, eos_token_id: int | None = None,
                 pad_token_id: int | None = None):
        self.bos_token_id, self.eos_token_id = bos_token_id, eos_token_id
        self.pad_token_id = pad_token_id if pad_token_id is not None else eos_token_id

    def _pieces(self, text: str) -> list[tuple[int, int]]:
        out = []
        for m in re.finditer(r"\s*[A-Za-z0-9]+|\s*[^A-Za-z0-9\s]|\s+$", text):
            a, b = m.span()
            n = max(1, math.ceil(len(m.group().strip() or " ") / CHARS_PER_TOKEN))
            step = (b - a) / n
            out += [(a + round(i * step), a + round((i + 1) * step)) for i in range(n)]
        return out

    def __call__(self, text: str | list[str], add_special_tokens: bool = True, return_offsets_mapping: bool = False,
                 **_):
        if isinstance(text, (list, tuple)):  # a batch, as a fast tokenizer takes it: one list per text
            encs = [self(t, add_special_tokens, return_offsets_mapping) for t in text]
            return {k: [e[k] for e in encs] for k in encs[0]} if encs else {"input_ids": []}
        offsets = self._pieces(text)
        ids = [1000 + i for i in range(len(offsets))]
        if add_special_tokens and self.bos_token_id is not None:
            ids, offsets = [self.bos_token_id, *ids], [(0, 0), *offsets]
        enc = {"input_ids": ids}
        if return_offsets_mapping:
            enc["offset_mapping"] = offsets
        return enc

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self(text, add_special_tokens)["input_ids"]


@dataclass
class ModelInfo:
    """What a dry run knows about a model: sizes (``shape``), the tokenizer (or :class:`ApproxTokenizer`), and
    ``tokenizer_note`` (``None`` when the real tokenizer was found); ``split``: for a model not built yet, its
    recipe's queries per split (``split(task) -> {"train": [...], "heldout": [...]}``), which its card will record;
    ``architecture``: the model class, with ``has_adapter`` whether ivlens has a family for it (patching and tracing
    need one: :func:`check_adapter`)."""

    name: str
    path: str
    shape: ModelShape
    tokenizer: object
    tokenizer_note: str | None = None
    config: object = field(default=None, repr=False)
    gguf: bool = False
    split: Callable | None = field(default=None, repr=False)
    architecture: str | None = None
    has_adapter: bool = True


def check_adapter(info: ModelInfo) -> None:
    """Raise :class:`~ivlens.models.adapters.UnsupportedArchitectureError` when ``info``'s model class has no
    registered family (the meta-device weights cannot run the adapter's probe forward, so only the registration is
    checked before a run; the real run derives and verifies the adapter)."""
    from ivlens.models.adapters import ARCHITECTURES, UnsupportedArchitectureError

    if not info.has_adapter:  # fail now, not after the estimate
        raise UnsupportedArchitectureError(
            f"ivlens has no architecture adapter for {info.architecture} (patching and tracing need one; eval "
            f"and probes do not). Supported: {', '.join(sorted(ARCHITECTURES))}. docs/architectures.md says how "
            "to add one.")


def read_config(path: str, gguf: str | None, revision: str | None, trust_remote_code: bool):
    """The model's ``transformers`` config from its directory, hub id or GGUF header (no weights read)."""
    from transformers import AutoConfig

    kw = {"revision": revision, "trust_remote_code": trust_remote_code}
    if gguf:
        kw["gguf_file"] = gguf
    return AutoConfig.from_pretrained(path, **kw)


def meta_model(config):
    """The model of ``config`` on the meta device: every parameter's shape, no storage, nothing loaded."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def model_info(name: str, *, gguf_file: str | None = None, revision: str | None = None,
               trust_remote_code: bool = False, require_adapter: bool = False) -> ModelInfo:
    """Sizes and tokenizer of ``name`` (hub id, local directory, ``.gguf``, ivlens name) without its weights.

    A local GGUF file that an earlier run has already converted (:mod:`ivlens.models.gguf_cache`) is sized from its
    conversion: the same config and tokenizer, read in about a second instead of parsing the GGUF header twice (10 s
    for SmolLM2 here), and its load is estimated as that of the conversion (no dequantisation; ``gguf`` False).

    Raises :class:`~ivlens.models.load.ModelLoadError` when no config can be read, and, with
    ``require_adapter`` (patching, tracing), :class:`~ivlens.models.adapters.UnsupportedArchitectureError` for a
    class with no registered family (:func:`check_adapter`).
    """
    from ivlens.models.adapters.registry import family_of
    from ivlens.models.files import check_local_model, loading_failure
    from ivlens.models.load import ModelLoadError, header_source, resolve_name

    path, gguf = resolve_name(name, gguf_file)
    local_gguf = gguf is not None and Path(path, gguf).is_file()
    if Path(path).is_dir():  # the files a run would refuse are refused by its dry run too (headers only)
        check_local_model(Path(path), gguf, trust_remote_code)
    source, source_gguf = header_source(path, gguf)
    try:
        config = read_config(source, source_gguf, revision, trust_remote_code)
    except Exception as e:  # noqa: BLE001 - the boundary: a GGUF header transformers cannot read is named as a load names it
        if local_gguf:
            raise loading_failure(name, str(Path(path, gguf)), e) from None
        if not isinstance(e, OSError | ValueError):
            raise
        raise ModelLoadError(f"could not read the config of {name!r}: {e}") from None
    model = meta_model(config)
    n_params = sum(p.numel() for p in model.parameters())  # shared (tied) matrices counted once
    shape = ModelShape.from_config(config, n_params=n_params)
    # gguf: the load will dequantise the file (the conversion's safetensors load as any checkpoint does)
    info = ModelInfo(name, path, shape, None, None, config, source_gguf is not None, architecture=type(model).__name__,
                     has_adapter=family_of(model) is not None)
    del model
    if require_adapter:
        check_adapter(info)
    info.tokenizer, info.tokenizer_note = _tokenizer(source, source_gguf, revision, trust_remote_code, config)
    return info


def _tokenizer(path, gguf, revision, trust_remote_code, config):
    from pathlib import Path

    from transformers import AutoTokenizer

    from ivlens.models.load import prepare_tokenizer

    files = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    has_files = gguf is not None or not Path(path).is_dir() or any((Path(path) / f).exists() for f in files)
    try:
        if not has_files:  # some tokenizer classes build an empty vocabulary from nothing: do not let them
            raise OSError("no tokenizer files")
        tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code,
                                            **({"gguf_file": gguf} if gguf else {}))
        prepare_tokenizer(tok)
        return tok, None
    except (OSError, ValueError, TypeError, KeyError):
        pass  # no usable tokenizer: fall through to the approximate one below, and the cost estimate says so
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    note = (f"no tokenizer in {path}: prompt lengths estimated (1 token per word of up to {CHARS_PER_TOKEN} "
            f"letters, per {CHARS_PER_TOKEN} letters of longer words and per punctuation mark"
            + (", plus BOS)" if config.bos_token_id is not None else ")"))
    return ApproxTokenizer(config.bos_token_id, eos, getattr(config, "pad_token_id", None)), note


def forward_batch_size(loaded, n_tokens: int, memory_budget: str | int | None = None) -> int:
    """Prompts per forward of ``loaded`` (a :class:`~ivlens.models.load.LoadedModel`) that fit the memory budget
    (:func:`ivlens.budget.resolve_memory_budget`) for prompts of up to ``n_tokens`` tokens (the cost per prompt:
    :func:`ivlens.estimate.costs.probe_batch_size`): the batch size of IV collection and of nnsight patch rows."""
    shape = ModelShape.from_config(loaded.model.config)
    dtype = str(loaded.model.dtype).removeprefix("torch.")
    return probe_batch_size(shape, n_tokens, resolve_memory_budget(memory_budget, loaded.device), dtype)
