"""NDIF access for ``--remote``: the API key, which models NDIF can run, and models as nnsight sees them.

With ``--remote`` the patch sweep and IV collection run their nnsight programs
(:mod:`ivlens.nnsight_program`) on NDIF, the National Deep Inference Fabric, instead of on local weights.
Nothing is loaded here but the model's config and tokenizer (nnsight builds the model on the ``meta`` device);
each trace ships the program to NDIF and brings back only what it saves.

- The key comes from ``NDIF_API_KEY`` and is set on nnsight's in-memory configuration (``CONFIG.API.APIKEY``,
  nnsight 0.8's documented setting; ``CONFIG.set_default_api_key`` would also write it to the user's
  ``~/.config/nnsight/config.yaml``, which ivlens does not do).
- NDIF runs hub checkpoints it hosts, named by hub id: local directories, GGUF files and the model organisms
  are refused before anything runs.

:func:`local_model` wraps an already loaded model for the same programs with ``remote=False``; the tests use
it to check the remote code path against the torch engine without a network.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ivlens.errors import IvlensError
from ivlens.models.load import SMOLLM2, LoadedModel, prepare_tokenizer

KEY_VARIABLE = "NDIF_API_KEY"
KEY_MESSAGE = "--remote needs NDIF_API_KEY: get a key at https://login.ndif.us and export NDIF_API_KEY=..."
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class RemoteError(IvlensError, ValueError):
    """``--remote`` cannot run as asked: the message names the option and the fix."""


def configure_key() -> str:
    """Read ``NDIF_API_KEY`` and hand it to nnsight (in memory, for this process); :class:`RemoteError` when
    it is missing."""
    key = os.environ.get(KEY_VARIABLE, "").strip()
    if not key:
        raise RemoteError(KEY_MESSAGE)
    from nnsight import CONFIG

    CONFIG.API.APIKEY = key
    return key


def require_hub_id(name: str, option: str = "--model") -> str:
    """``name`` when it is a hub id (``org/name``) NDIF could host; else :class:`RemoteError` naming ``option``."""
    why = None
    if name.startswith("organism-") or name == SMOLLM2:
        why = "is an ivlens model built or shipped on this machine"
    elif name.endswith(".gguf"):
        why = "is a GGUF file"
    elif Path(name).expanduser().exists():
        why = "is a local path"
    elif not _HUB_ID.match(name):
        why = "is not a hub id of the form org/name"
    if why is not None:
        raise RemoteError(f"{option} {name!r} {why}; --remote runs on NDIF, which hosts hub checkpoints only: "
                          f"give {option} a hub id NDIF serves (e.g. allenai/OLMo-2-0425-1B), or drop --remote "
                          "to run locally")
    return name


@dataclass
class NNsightModel(LoadedModel):
    """A model for the nnsight programs: ``nn`` (an nnsight ``TransformersModel``) and whether its traces run on
    NDIF (``remote``). ``model`` is the wrapped Hugging Face module (``meta`` weights when remote), so sizes,
    the decoder layers and the tokenizer are read as from any :class:`LoadedModel`; its weights are never used
    directly."""

    nn: Any = None
    remote: bool = False

    @property
    def device(self) -> torch.device:
        return torch.device("cpu") if self.remote else super().device

    def describe(self) -> dict:
        return super().describe() | {"backend": "nnsight", "remote": "ndif" if self.remote else None}


def through_nnsight(loaded: LoadedModel) -> bool:
    """Whether ``loaded`` runs through the nnsight programs (an :class:`NNsightModel`: ``--remote``, or local
    weights wrapped by :func:`local_model`) rather than the torch engine and hooks."""
    return isinstance(loaded, NNsightModel)


def _transformers_model(source, **kwargs):
    import warnings

    from nnsight import TransformersModel

    with warnings.catch_warnings():  # nnsight warns about its own deprecations on construction
        warnings.simplefilter("ignore")
        return TransformersModel(source, task="text-generation", **kwargs)


def open_remote(name: str, *, revision: str | None = None) -> NNsightModel:
    """``name`` (a hub id) as an NDIF model: config and tokenizer from the hub, weights on the ``meta`` device.
    Checks the name and the key first, so either is reported before any download."""
    require_hub_id(name)
    configure_key()
    nn = _transformers_model(name, revision=revision)
    tok = nn.tokenizer
    prepare_tokenizer(tok)
    return NNsightModel(nn._module, tok, name, name, revision, None, None, nn=nn, remote=True)


def local_model(lm: LoadedModel) -> NNsightModel:
    """An already loaded model for the nnsight programs with ``remote=False`` (the same programs as on NDIF)."""
    if isinstance(lm, NNsightModel):
        return lm
    nn = _transformers_model(lm.model, tokenizer=lm.tokenizer)
    return NNsightModel(lm.model, lm.tokenizer, lm.name, lm.path, lm.revision, lm.weight_hash, lm.gguf_file,
                        nn=nn, remote=False)


def open_remote_models(names, *, revision: str | None = None, option: str = "--model") -> list[NNsightModel]:
    """Every model of ``names`` on NDIF: the hub ids are checked first, then the key, then each model opens."""
    for name in names:
        require_hub_id(name, option)
    configure_key()
    return [open_remote(name, revision=revision) for name in names]
