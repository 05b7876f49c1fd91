"""Geometry of instruction vectors: collection at T_inst, linear probes, LDA/PCA, cosine similarity.

>>> from ivlens.probing import probe_run
>>> res = probe_run(["organism-base", "organism-sft", "organism-dpo"], ["adjectives", "animals"])
"""

from .collect import IVStore, collect_ivs, load_layer, load_layers, parse_layers, read_resid
from .instructions import LABEL_FAMILIES, InstructionRow, instruction_set, organism_heldout
from .probes import (
    LayerProbe,
    LogisticProbe,
    ProbeConfig,
    class_cosine,
    cv_accuracy,
    heldout_accuracy,
    lda_2d,
    pca_2d,
    probe_layer,
    probe_layer_fitted,
    probe_layers,
    shuffled_cv_accuracy,
)
from .run import ProbeResult, analyse_store, probe_run
from .spec import ProbeSpec

__all__ = ["ProbeSpec",
    "LABEL_FAMILIES", "IVStore", "InstructionRow", "LayerProbe", "LogisticProbe", "ProbeConfig", "ProbeResult",
    "analyse_store", "class_cosine", "collect_ivs", "cv_accuracy", "heldout_accuracy", "instruction_set",
    "lda_2d", "load_layer", "load_layers", "organism_heldout", "parse_layers", "pca_2d", "probe_layer",
    "probe_layer_fitted", "probe_layers", "probe_run", "read_resid", "shuffled_cv_accuracy",
]
