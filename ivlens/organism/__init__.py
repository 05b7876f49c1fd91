"""Model organisms: small OLMo-2 checkpoints (base → SFT → DPO) trained offline on the task vocabularies.

>>> from ivlens.organism import ensure_organism, resolve_organism
>>> ensure_organism("gist")                 # builds into the user cache if missing (minutes: `ivlens organism build --dry-run`)
>>> resolve_organism("organism-sft")        # .../organism/v9/gist/sft

Modules: ``data`` (corpora), ``tokenizer``, ``gist`` (gist attention mask), ``train`` (stages), ``measure``,
``card``, ``paths``, ``build``, ``cli``.
"""

from ivlens.organism.build import ensure_organism
from ivlens.organism.card import organism_split, read_card
from ivlens.organism.paths import ORGANISM_VERSION, organism_dir, resolve_organism
from ivlens.organism.spec import OrganismSpec
from ivlens.providers import ModelNames, register_card_reader, register_model_names

# The foundations resolve organism names and read organism cards through ivlens.providers (they must not import
# the organism): register both here, on import.
register_model_names(ModelNames(
    "organism-", resolve_organism,
    "model organism {name!r} is not built yet: run `ivlens organism build` (a few minutes on 2 CPU cores), then retry"))
register_card_reader(read_card, organism_split)

__all__ = ["ORGANISM_VERSION", "OrganismSpec", "ensure_organism", "organism_dir", "organism_split", "read_card",
           "resolve_organism"]
