"""Architecture adapters: one vocabulary for every causal LM that ivlens patches or traces.

- :mod:`.spec`: the data (``ArchitectureSpec``, ``NormParams``, ``AttentionParams``, ``MLPParams``);
- :mod:`.derive`: the spec read off a model's config and module tree (paths, norm roles, norm formula, ...);
- :mod:`.registry`: the supported families, a few lines of data each, chosen by HF class; :func:`get_adapter`;
- :mod:`.adapter`: :class:`ArchitectureAdapter`, what the analyses use (its docstring is the contract).

Analyses that need no internals (generation, residuals at a token) use :func:`find_decoder_layers` and
:func:`resid_from_output`, which work on any causal LM.
"""

from .adapter import ArchitectureAdapter, PrefixCache
from .derive import derive_spec, find_decoder_layers, resid_from_output
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
           "derive_spec", "family_of", "find_decoder_layers", "get_adapter", "register", "resid_from_output"]
