"""Checking a model the user hands over before transformers reads it, so that every way it can be unusable ends in
one :class:`ModelLoadError` naming the file, what is wrong with it and what to do (the CLI prints it as one line,
exit code 2).

What is checked, on local models only (a hub download is checked by transformers and :func:`loading_failure`):

- a path that looks like a file or directory (``/…``, ``./…``, ``~…``, ``*.gguf``) and does not exist;
- a GGUF file: it exists and begins with the GGUF magic bytes (a truncated or corrupt one fails in transformers'
  reader, which :func:`loading_failure` names);
- ``config.json``: UTF-8 JSON holding an object, whose ``model_type`` transformers knows as a causal LM and whose
  ``architectures`` (where given) name a class transformers has, unless the repository's own code defines it
  (``auto_map``) and the user allowed that code;
- ``*.safetensors``: each header parses and covers the whole file (a truncated or overwritten file fails here),
  and every shard a ``model.safetensors.index.json`` names is present;
- after loading (:func:`check_loading_info`): no weight of the model was missing from the files (transformers
  would initialise it at random and only warn) or of another shape.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ivlens.errors import IvlensError

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
#: What to do about weight files that are truncated or corrupt.
RECOPY = "copy or download the model again (a partial download or an interrupted copy leaves such files)"


class ModelLoadError(IvlensError, RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


def looks_like_a_path(name: str) -> bool:
    """``name`` is written as a local path (not a hub id ``org/model`` nor an ivlens name)."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.endswith(".gguf") or name in (".", "..")


def check_gguf(file: Path) -> None:
    """``file`` exists and is a GGUF file (its first four bytes are ``GGUF``)."""
    if not file.is_file():
        raise ModelLoadError(f"{file}: no such GGUF file; pass the path of a .gguf file, or a model directory")
    with file.open("rb") as fh:
        head = fh.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        raise ModelLoadError(f"{file} is not a GGUF file (it begins with {head!r}, not the magic bytes "
                             f"{GGUF_MAGIC!r}); pass a .gguf file written by llama.cpp's tools, or a Hugging Face "
                             "model directory (config.json and *.safetensors)")


def read_json(file: Path, what: str) -> dict:
    """``file`` as a JSON object, else a :class:`ModelLoadError` with the line and column of the fault."""
    try:
        data = json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ModelLoadError(f"{file} is not UTF-8 text (byte at offset {e.start}); {what} must be JSON: restore "
                             f"it, or {RECOPY}") from None
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{file} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); {what} must "
                             f"be JSON: restore it, or {RECOPY}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{file} holds a JSON {type(data).__name__}, not an object; {what} is an object of "
                             f"settings: restore it, or {RECOPY}")
    return data


def check_config(file: Path, trust_remote_code: bool) -> dict:
    """``config.json`` names a causal LM that transformers can build (see the module docstring); returns it."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = read_json(file, "a model's config.json")
    version = transformers.__version__
    remote = bool(config.get("auto_map"))
    if remote and trust_remote_code:
        return config  # the repository's own code defines the model; transformers checks the rest
    model_type = config.get("model_type")
    remote_fix = (" Its own repository's code defines it (auto_map): pass --trust-remote-code only if you trust "
                  "that code." if remote else "")
    if not isinstance(model_type, str) or not model_type:
        raise ModelLoadError(f"{file} has no model_type; add the model_type of its architecture (e.g. \"llama\", "
                             f"\"olmo2\", \"gpt2\"), as save_pretrained writes it.{remote_fix}")
    if model_type not in CONFIG_MAPPING_NAMES:
        raise ModelLoadError(f"{file} names model_type {model_type!r}, which transformers {version} does not know; "
                             "upgrade transformers (pip install -U transformers) if the model is newer than it, "
                             f"or correct model_type.{remote_fix}")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(f"{file} names model_type {model_type!r}, which is not a causal (decoder-only) language "
                             "model in transformers; ivlens analyses AutoModelForCausalLM models (llama, olmo2, "
                             "qwen2, gpt2, …)")
    names = config.get("architectures") or []
    if isinstance(names, list) and names and not remote and not any(
            isinstance(n, str) and hasattr(transformers, n) for n in names):
        loads = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
        raise ModelLoadError(f"{file} names architectures {names}, which transformers {version} does not have (its "
                             f"model_type {model_type!r} would load {loads} instead, a guess); upgrade transformers "
                             f"if the model is newer than it, or correct architectures (e.g. [\"{loads}\"])")
    return config


def check_safetensors(directory: Path) -> None:
    """Every ``*.safetensors`` in ``directory`` has a header that parses and covers the file, and every shard a
    ``model.safetensors.index.json`` names is there."""
    from safetensors import safe_open

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, "the shard index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelLoadError(f"{index} has no weight_map (tensor name → shard file); {RECOPY}")
        missing = sorted({str(f) for f in weight_map.values()} - {p.name for p in directory.glob("*.safetensors")})
        if missing:
            raise ModelLoadError(f"{directory}: the shard index names {len(missing)} missing weight file(s) "
                                 f"({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''}); {RECOPY}")
    for f in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except Exception as e:  # noqa: BLE001 - safetensors' SafetensorError, OSError, …: the file is unreadable
            reason = " ".join(str(e).split()) or type(e).__name__
            raise ModelLoadError(f"{f} is not a readable safetensors file ({reason}): it is truncated or corrupt; "
                                 f"{RECOPY}") from None


def check_local_model(path: Path, gguf: str | None, trust_remote_code: bool) -> None:
    """The checks of the module docstring on a local model: a directory (``config.json``, weights) or a GGUF file
    ``path / gguf``."""
    if gguf:
        check_gguf(path / gguf)
        return
    config = path / "config.json"
    if config.exists():
        check_config(config, trust_remote_code)
    check_safetensors(path)


def check_loading_info(where: str, info: dict) -> None:
    """Refuse a model some of whose weights were not in its files (transformers initialises them at random and
    only warns) or had another shape; note tensors the model does not use."""
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or ())
    if missing or mismatched:
        bad = missing or mismatched
        what = ("lack" if missing else "give other shapes for") + f" {len(bad)} weight(s) the model needs"
        raise ModelLoadError(f"{where}: the weight files {what} ({', '.join(bad[:3])}{', …' if len(bad) > 3 else ''})"
                             "; they were written for another architecture or configuration than config.json says, "
                             f"or are incomplete: {RECOPY}, or correct config.json")
    unexpected = sorted(info.get("unexpected_keys") or ())
    if unexpected:
        log.warning("%s: %d tensor(s) in the weight files are not used by the model (%s%s)", where, len(unexpected),
                    ", ".join(unexpected[:3]), ", …" if len(unexpected) > 3 else "")


def loading_failure(name: str, where: str, error: Exception) -> ModelLoadError:
    """The one-line error for an exception transformers raised while loading ``name`` (read from ``where``). A GGUF
    file's fault is named by the first error of the chain (transformers re-raises a GGUF reader's
    ``UnicodeDecodeError`` as "the config file … is not a valid JSON file")."""
    if where.endswith(".gguf"):
        while (error.__cause__ or error.__context__) is not None:
            error = error.__cause__ or error.__context__
    reason = " ".join(str(error).split()) or type(error).__name__
    if where.endswith(".gguf"):
        return ModelLoadError(f"{where} could not be read as a GGUF model ({type(error).__name__}: {reason}): it is "
                              f"truncated, corrupt, or of an architecture transformers cannot read from GGUF; "
                              f"{RECOPY}, or use the model's Hugging Face directory")
    return ModelLoadError(f"could not load {name!r} from {where} ({type(error).__name__}: {reason}); check that it "
                          "is a complete causal LM (config.json, *.safetensors, tokenizer files) or "
                          f"{RECOPY}; --verbose shows the traceback")
