"""What a package above the foundations provides to them, registered when it is imported.

The foundations (:mod:`ivlens.models`, :mod:`ivlens.tasks`) must not import the packages built on them, yet two
of their questions are answered by one of those packages, the model organism (:mod:`ivlens.organism`):

- **model names**: ``organism-sft`` is the checkpoint directory of a build; :func:`register_model_names` maps a
  name prefix to a resolver, which :func:`ivlens.models.load.resolve_name` asks first;
- **model cards**: the train / held-out split of queries and rephrasings recorded beside a model's weights;
  :func:`register_card_reader` installs the function that reads it (``card.json``, in the stage directory or its
  parent), which :func:`ivlens.tasks.selection.split_queries` and the probes' held-out rephrasings call.

The organism registers both when :mod:`ivlens.organism` is imported; :mod:`ivlens.analyses`, which every entry
point (the CLI, :mod:`ivlens.api`, studies) imports, imports it. Library code that resolves ``organism-*`` names
without those entry points imports :mod:`ivlens.organism` first.

>>> import ivlens.organism  # registers organism-base|sft|dpo and the organism's card
>>> resolve_model_name("organism-sft")  # ~/.cache/ivlens/organism/v6/gist/sft (ModelNameError if unbuilt)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ivlens.errors import IvlensError


class ModelNameError(IvlensError):
    """A registered model name that does not resolve (e.g. an organism that is not built yet)."""


@dataclass(frozen=True)
class ModelNames:
    """A family of model names: every name starting with ``prefix`` resolves through ``resolve``.

    ``resolve(name)`` returns the checkpoint directory, or ``None`` when ``name`` is not one of the family's names;
    it raises :class:`FileNotFoundError` (with the fix) when the name is valid but has no checkpoint yet.
    ``unknown``: the message for a name with the prefix that ``resolve`` does not know (``{name}`` is filled in).
    """

    prefix: str
    resolve: Callable[[str], Path | None]
    unknown: str


_MODEL_NAMES: dict[str, ModelNames] = {}
#: ``card``: reads the card recorded beside a model's weights; ``split``: its queries per task and split (both
#: raise FileNotFoundError when there is none)
_CARD_READERS: dict[str, Callable[[Path], dict]] = {}


def register_model_names(names: ModelNames) -> None:
    """Make ``resolve_model_name`` resolve every name starting with ``names.prefix`` (idempotent per prefix)."""
    _MODEL_NAMES[names.prefix] = names


def is_registered_name(name: str) -> bool:
    """Whether ``name`` belongs to a registered family of names (its checkpoint may not exist yet)."""
    return any(name.startswith(n.prefix) for n in _MODEL_NAMES.values())


def resolve_model_name(name: str) -> Path | None:
    """The checkpoint directory of a registered name; ``None`` when no registered prefix matches ``name``.
    Raises :class:`ModelNameError` (one line, with the fix) when a prefix matches but the name does not resolve."""
    for names in _MODEL_NAMES.values():
        if not name.startswith(names.prefix):
            continue
        try:
            path = names.resolve(name)
        except (FileNotFoundError, ValueError) as e:
            raise ModelNameError(str(e)) from None
        if path is None:
            raise ModelNameError(names.unknown.format(name=name))
        return path
    return None


def register_card_reader(card: Callable[[Path], dict], split: Callable[[Path], dict]) -> None:
    """Install the readers of model cards (one package provides them: the organism): ``card(model_dir)`` → the
    card, ``split(model_dir)`` → ``{task: {"train": [queries], "heldout": [queries]}}``."""
    _CARD_READERS.update(card=card, split=split)


def _reader(kind: str, model_dir: str | Path) -> dict:
    if kind not in _CARD_READERS:
        raise FileNotFoundError(f"no model card reader is registered (import ivlens.organism): {model_dir}")
    return _CARD_READERS[kind](Path(model_dir))


def read_model_card(model_dir: str | Path) -> dict:
    """The card recorded beside the weights at ``model_dir``; :class:`FileNotFoundError` when there is none."""
    return _reader("card", model_dir)


def read_query_split(model_dir: str | Path) -> dict[str, dict[str, list[str]]]:
    """``{task: {"train": [queries], "heldout": [queries]}}`` from the card at ``model_dir``;
    :class:`FileNotFoundError` when there is none."""
    return _reader("split", model_dir)
