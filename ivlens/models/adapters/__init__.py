"""Architecture adapters: one vocabulary for every causal LM that ivlens patches or traces.

- :mod:`.spec`: the data (``ArchitectureSpec``, ``NormParams``, ``AttentionParams``, ``MLPParams``);
- :mod:`.derive`: the spec read off a model's config and module tree (paths, norm roles, norm formula, ...);
- :mod:`.registry`: the supported families, a few lines of data each, chosen by HF class; :func:`get_adapter`;
- :mod:`.adapter`: :class:`ArchitectureAdapter`, what the analyses use (its docstring is the contract);
- :mod:`.readout`: the residual read-out with forward hooks (:func:`capture_resid`, :func:`resid_at`), the one
  every analysis reads ``resid_post[l]`` with.

Analyses that need no internals (generation, residuals at a token) use :func:`find_decoder_layers` and
:mod:`.readout`, which work on any causal LM.
"""

from .adapter import ArchitectureAdapter, PrefixCache
from .derive import derive_spec, find_decoder_layers, resid_from_output
from .readout import capture_resid, resid_at
from .registry import ARCHITECTURES, FAMILIES, Family, family_of, get_adapter, register
from .spec import (
    NORM_ROLES,
    ArchitectureSpec,
    AttentionParams,
    MLPParams,
    NormKind,
    NormParams,
    NormRole,
    UnsupportedArchitectureError,
)

__all__ = ["ARCHITECTURES", "FAMILIES", "NORM_ROLES", "ArchitectureAdapter", "ArchitectureSpec", "AttentionParams",
           "Family", "MLPParams", "NormKind", "NormParams", "NormRole", "PrefixCache", "UnsupportedArchitectureError",
           "capture_resid", "derive_spec", "family_of", "find_decoder_layers", "get_adapter", "register", "resid_at",
           "resid_from_output"]
