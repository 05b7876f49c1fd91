"""Model organisms: small OLMo-2 checkpoints (base → SFT → DPO) trained offline on the task vocabularies.

>>> from ivlens.organism import ensure_organism, resolve_organism
>>> ensure_organism("gist")                 # builds into the user cache if missing (minutes: `ivlens organism build --dry-run`)
>>> resolve_organism("organism-sft")        # .../organism/v8/gist/sft

Modules: ``data`` (corpora), ``tokenizer``, ``gist`` (gist attention mask), ``train`` (stages), ``measure``,
``card``, ``paths``, ``build``, ``cli``.
"""

from ivlens.organism.card import organism_split, read_card
from ivlens.organism.paths import ORGANISM_VERSION, ensure_organism, organism_dir, resolve_organism

__all__ = ["ORGANISM_VERSION", "ensure_organism", "organism_dir", "organism_split", "read_card",
           "resolve_organism"]
