"""Models a user may hand over that cannot be used, built from one tiny OLMo-2 checkpoint (for test_load and the
CLI error battery). Each case: the ``--model`` argument and the parts its one-line error must hold (the file,
what is wrong, what to do)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file

from ivlens.testing.tiny import save_tiny_checkpoint

#: The cases :func:`make_bad_models` builds (names for test parametrisation).
KINDS = ("config not JSON", "config not UTF-8", "unknown model_type", "unknown architectures", "not a causal LM",
         "truncated safetensors", "header bytes flipped", "missing shard", "tensor missing", "tensor of another shape",
         "not GGUF (.gguf)", "a weights file, not a model", "corrupt GGUF", "no such path")


@dataclass(frozen=True)
class BadModel:
    model: str  # the --model argument
    needles: tuple[str, ...]  # the file, what is wrong, what to do


def _copy(good: Path, root: Path, name: str) -> Path:
    d = root / name
    shutil.copytree(good, d)
    return d


def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def _edit_tensors(d: Path, edit) -> None:
    tensors = load_file(d / "model.safetensors")
    edit(tensors)
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})


def make_bad_models(root: Path) -> dict[str, BadModel]:
    """Every kind of unusable model, under ``root`` (one tiny checkpoint, copied and damaged per case)."""
    good = save_tiny_checkpoint(root / "good", "olmo2", n_layers=2)
    cases: dict[str, BadModel] = {}

    d = _copy(good, root, "config-not-json")
    (d / "config.json").write_text('{"model_type": "olmo2",')
    cases["config not JSON"] = BadModel(str(d), (f"{d}/config.json", "not valid JSON", "line 1", "copy or download"))

    d = _copy(good, root, "config-latin1")
    (d / "config.json").write_bytes('{"model_type": "olmo2", "name": "café"}'.encode("latin-1"))
    cases["config not UTF-8"] = BadModel(str(d), (f"{d}/config.json", "not UTF-8", "restore it"))

    d = _copy(good, root, "unknown-model-type")
    _edit_config(d, model_type="frobnicator", architectures=["FrobnicatorForCausalLM"])
    cases["unknown model_type"] = BadModel(str(d), (f"{d}/config.json", "'frobnicator'", "does not know",
                                                    "upgrade transformers"))

    d = _copy(good, root, "unknown-architecture")
    _edit_config(d, architectures=["FrobnicatorForCausalLM"])
    cases["unknown architectures"] = BadModel(str(d), (f"{d}/config.json", "FrobnicatorForCausalLM",
                                                       "does not have", "Olmo2ForCausalLM", "correct architectures"))

    d = _copy(good, root, "not-causal")
    _edit_config(d, model_type="t5", architectures=["T5ForConditionalGeneration"])
    cases["not a causal LM"] = BadModel(str(d), (f"{d}/config.json", "'t5'", "not a causal"))

    d = _copy(good, root, "truncated")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    cases["truncated safetensors"] = BadModel(str(d), (str(w), "not a readable safetensors file", "truncated",
                                                       "copy or download the model again"))

    d = _copy(good, root, "header-flipped")
    w = d / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[12:20] = b"\xff" * 8  # inside the JSON header: invalid UTF-8
    w.write_bytes(bytes(data))
    cases["header bytes flipped"] = BadModel(str(d), (str(w), "not a readable safetensors file", "corrupt"))

    d = _copy(good, root, "missing-shard")
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}))
    cases["missing shard"] = BadModel(str(d), (str(d), "model-00002-of-00002.safetensors", "missing",
                                               "copy or download"))

    d = _copy(good, root, "missing-tensor")
    _edit_tensors(d, lambda t: t.pop("model.layers.0.mlp.up_proj.weight"))
    cases["tensor missing"] = BadModel(str(d), (str(d), "lack 1 weight", "model.layers.0.mlp.up_proj.weight",
                                                "correct config.json"))

    d = _copy(good, root, "wrong-shape")
    _edit_tensors(d, lambda t: t.__setitem__("model.layers.0.mlp.up_proj.weight", t["lm_head.weight"][:3, :5].clone()))
    cases["tensor of another shape"] = BadModel(str(d), (str(d), "other shapes", "model.layers.0.mlp.up_proj.weight"))

    f = root / "notes.gguf"
    f.write_text("these are my notes, not a model\n")
    cases["not GGUF (.gguf)"] = BadModel(str(f), (str(f), "is not a GGUF file", "b'thes'", "pass a .gguf file"))

    f = root / "model.safetensors"
    shutil.copy(good / "model.safetensors", f)
    cases["a weights file, not a model"] = BadModel(str(f), (str(f), "is not a GGUF file", "model directory"))

    f = root / "broken.gguf"
    f.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)  # the magic, then nonsense
    cases["corrupt GGUF"] = BadModel(str(f), (str(f), "could not be read as a GGUF model", "truncated, corrupt"))

    missing = root / "no-such-model"
    cases["no such path"] = BadModel(str(missing), (str(missing), "no such model directory or file"))
    assert tuple(cases) == KINDS
    return cases
