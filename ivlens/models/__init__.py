"""Model loading and the architecture adapters."""

from .adapters import ARCHITECTURES, ArchitectureAdapter, UnsupportedArchitectureError, get_adapter
from .load import LoadedModel, ModelLoadError, load_model

__all__ = ["ARCHITECTURES", "ArchitectureAdapter", "LoadedModel", "ModelLoadError", "UnsupportedArchitectureError",
           "get_adapter", "load_model"]
