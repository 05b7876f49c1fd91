"""GGUF checkpoints converted once: a GGUF model is dequantised into a safetensors directory in ivlens's cache the
first time it is loaded, and loaded from there afterwards.

transformers reads a GGUF file's header three times per load (config, weights, tokenizer) and dequantises every
tensor: 17 s for SmolLM2-135M-Instruct's 272 tensors and 49k-token vocabulary on one core, most of it parsing the
header's strings, and every step of a study loads its models again. Loading the converted directory (fp32
safetensors, config, tokenizer files) takes about a second. The conversion is what transformers' own GGUF loading
produces, saved with ``save_pretrained`` (safetensors, no pickle), so the weights and the tokenizer are the same.

Layout: ``$IVLENS_CACHE/gguf/<key>/`` (``IVLENS_CACHE`` defaults to ``~/.cache/ivlens``), ``key`` the GGUF file's
content hash (:func:`ivlens.models.load.weight_hash`; for a file above its full-hash limit, name, size and modification
time). A directory is complete when it holds :data:`COMPLETE`; processes converting the same file at once wait for
each other on a file lock, and a half-written conversion is never read.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

from .cache import cache_root

COMPLETE = "converted-from-gguf.json"


def conversion_key(gguf: Path, content_hash: str) -> str:
    """The cache key of ``gguf``: its content hash, plus its modification time where that hash is only of the name
    and size (``quick:``)."""
    if content_hash.startswith("quick:"):
        return f"quick-{content_hash.removeprefix('quick:')}-{gguf.stat().st_mtime_ns}"
    return content_hash


def _target(directory: str, gguf_file: str, content_hash: str, dtype) -> Path:
    gguf = Path(directory) / gguf_file
    suffix = "" if str(dtype) == "torch.float32" else "-" + str(dtype).removeprefix("torch.")
    return cache_root() / "gguf" / (conversion_key(gguf, content_hash) + suffix)


def existing_conversion(directory: str, gguf_file: str, content_hash: str, dtype) -> Path | None:
    """The complete safetensors directory of GGUF ``directory/gguf_file`` in ``dtype`` if the cache has one (nothing
    is converted; a dry run sizes the model from it)."""
    target = _target(directory, gguf_file, content_hash, dtype)
    return target if (target / COMPLETE).is_file() else None


def converted_dir(directory: str, gguf_file: str, content_hash: str, dtype) -> Path:
    """The safetensors directory of GGUF ``directory/gguf_file``, converting it first if the cache lacks it
    (``dtype``: the torch dtype the weights are dequantised to and saved in)."""
    from filelock import FileLock

    gguf = Path(directory) / gguf_file
    target = _target(directory, gguf_file, content_hash, dtype)
    if (target / COMPLETE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / COMPLETE).is_file():  # converted by another process while this one waited
            return target
        _convert(gguf, target, dtype)
    return target


def _save_dequantised(model, directory: Path) -> None:
    """Save a model loaded from GGUF as a plain safetensors checkpoint. transformers refuses ``save_pretrained`` on
    it (its GGUF quantizer marks it not serialisable although its tensors are already dequantised), so the weights
    go through safetensors' ``save_model`` (tied tensors stored once) and the config without its quantizer."""
    from safetensors.torch import save_model

    directory.mkdir(parents=True)
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(directory)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)
    save_model(model, str(directory / "model.safetensors"), metadata={"format": "pt"})


def _convert(gguf: Path, target: Path, dtype) -> None:
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ivlens.runs import atomic_write_text
    from ivlens.scoped import quiet_libraries

    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with quiet_libraries():
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype,
                                                         attn_implementation="eager")
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            _save_dequantised(model, partial)
            tokenizer.save_pretrained(partial)
        atomic_write_text(partial / COMPLETE, json.dumps({"gguf": str(gguf), "size": gguf.stat().st_size}) + "\n")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)  # an incomplete conversion (no marker) left by a killed process
    os.replace(partial, target)
