"""Model loading and the architecture adapters."""

from .adapters import (
           ARCHITECTURES,
           ArchitectureAdapter,
           Family,
           UnsupportedArchitectureError,
           get_adapter,
           register,
)
from .load import LoadedModel, ModelLoadError, load_model

__all__ = ["ARCHITECTURES", "ArchitectureAdapter", "Family", "LoadedModel", "ModelLoadError",
           "UnsupportedArchitectureError", "get_adapter", "load_model", "register"]
