"""Collecting instruction vectors (IVs): the residual stream at T_inst, at every layer, for many instructions.

An IV is ``resid_post[l][T_inst]`` of the **instruction-only** prompt (``ivlens.tasks.prompts``): the
residual after decoder layer ``l`` at the instruction's last token. Prompts are left-padded into batches
(with position ids counting real tokens only, so padding changes nothing) and read with the one residual
read-out, :func:`read_resid` (forward hooks that keep only the T_inst column of each row, so a batch never holds
more than ``[layer, batch, d_model]`` of activations; the same read-out as an nnsight trace with ``--remote``).

Storage (streamed, one unit file per batch, so a large set is never held twice in memory; a unit file keeps its
``shard-`` file name, which runs written before the name changed have)::

    <run>/ivs/<model>/labels.parquet            one row per instruction (task, subtask, split, t_inst, ...)
    <run>/ivs/<model>/shard-00000.safetensors   "resid": [layer, batch, d_model] float32, "rows": [batch]
    <run>/ivs/<model>/meta.json                 layers, d_model, n, model description

:func:`load_layer` reads one layer back from the unit files (memory-mapped slices), ``X: [n, d_model]``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from ivlens.estimate.model import forward_batch_size
from ivlens.models.adapters import resid_at
from ivlens.models.load import LoadedModel
from ivlens.ndif import through_nnsight
from ivlens.runs import atomic_write_json, atomic_write_parquet
from ivlens.tasks.prompts import Batch, PromptFormat, instruction_prompt, pad_left
from ivlens.units import Unit, UnitFiles, UnitLoop

from .instructions import InstructionRow

log = logging.getLogger(__name__)

#: the file of one batch's IVs (one unit of work, :mod:`ivlens.units`), by the batch's zero-padded number
UNIT_FILE = "shard-{key}.safetensors"


def read_resid(loaded: LoadedModel, batch: Batch, columns: Sequence[int], layers: Sequence[int]) -> torch.Tensor:
    """One forward; the residual after each of ``layers`` at column ``columns[i]`` of row ``i`` of a left-padded
    ``batch``: :func:`ivlens.models.adapters.resid_at` (forward hooks) for a loaded model, its nnsight program
    :func:`ivlens.nnsight_program.residuals_at` for an nnsight one (``--remote``).

    Returns:
        ``[layer, batch, d_model]`` float32 on CPU, in the order of ``layers``.
    """
    if through_nnsight(loaded):  # --remote: the nnsight program, on NDIF
        from ivlens.nnsight_program import residuals_at as program

        return program(loaded, batch, columns, layers)
    return resid_at(loaded.model, loaded.layers, batch.input_ids, batch.attention_mask, batch.position_ids, columns,
                    layers).float()


def parse_layers(spec: str | list[int] | None, n_layers: int) -> list[int]:
    """``all`` / ``None`` → every layer; ``"0,3,-1"`` or a list → those layers (negative counts from the end)."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return list(range(n_layers))
    from ivlens.specs import SpecError

    try:
        items = [int(x) for x in spec.split(",") if x.strip()] if isinstance(spec, str) else list(spec)
    except ValueError:
        raise SpecError(f"--layers: cannot read {spec!r}; give 'all' or layer indices such as 0,3,-1") from None
    layers = []
    for x in items:
        y = x + n_layers if x < 0 else x
        if not 0 <= y < n_layers:
            raise SpecError(f"--layers: layer {x} is out of range: the model has {n_layers} layers "
                            f"(0..{n_layers - 1}, or -{n_layers}..-1 from the end)")
        if y not in layers:
            layers.append(y)
    return sorted(layers)


@dataclass(frozen=True)
class IVStore:
    """A model's collected IVs on disk (see the module docstring)."""

    path: Path

    @property
    def meta(self) -> dict:
        return json.loads((self.path / "meta.json").read_text())

    @property
    def layers(self) -> list[int]:
        return list(self.meta["layers"])

    def labels(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "labels.parquet")

    @property
    def n_batches(self) -> int:
        """Batches (units of work) of the collection: ``ceil(n / batch_size)``."""
        meta = self.meta
        return -(-meta["n"] // meta["batch_size"])

    def unit_files(self) -> list[Path]:
        """The collection's unit files, one per batch, in batch order."""
        return sorted(self.path.glob("shard-*.safetensors"))

    def load_layer(self, layer: int) -> np.ndarray:
        """``X: [n, d_model]`` float32 for decoder layer ``layer``, rows in label order."""
        return load_layer(self.path, layer)

    def load_layers(self, layers: Sequence[int]) -> np.ndarray:
        """``X: [L, n, d_model]`` float32 for the decoder ``layers``, rows in label order."""
        return load_layers(self.path, layers)


def load_layer(path: str | Path, layer: int) -> np.ndarray:
    """Read decoder layer ``layer`` of a stored IV set: ``[n, d_model]`` float32, rows in label order."""
    return load_layers(path, [layer])[0]


def load_layers(path: str | Path, layers: Sequence[int]) -> np.ndarray:
    """Read decoder ``layers`` of a stored IV set: ``[L, n, d_model]`` float32, rows in label order; each unit file
    is opened once, and only the ``layers`` ' slices of it are read."""
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    for layer in layers:
        if layer not in meta["layers"]:
            raise KeyError(f"{path}: layer {layer} was not collected (collected: {meta['layers']})")
    ks = [meta["layers"].index(layer) for layer in layers]
    X = np.empty((len(ks), meta["n"], meta["d_model"]), dtype=np.float32)
    for unit_file in sorted(path.glob("shard-*.safetensors")):
        with safe_open(unit_file, framework="pt") as f:
            rows = f.get_tensor("rows").numpy()
            resid = f.get_slice("resid")  # [layers collected, batch, d_model]
            for i, k in enumerate(ks):
                X[i, rows] = resid[k].numpy()  # [batch, d_model]: one layer's slice only
    return X


def _batches(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def collect_ivs(loaded: LoadedModel, rows: list[InstructionRow], out: str | Path, *,
                layers: list[int] | None = None, batch_size: int | None = None, fmt: PromptFormat = "raw",
                resume: bool = False, memory_budget: str | int | None = None,
                units: UnitLoop | None = None) -> IVStore:
    """Run every instruction-only prompt and store its IVs at ``layers`` (default: all) under ``out``.

    Batches are formed in row order; each is a unit of work (:mod:`ivlens.units`) written as one unit file right
    away (atomically), so with ``resume=True`` the unit files already on disk are kept and only the missing batches
    run. ``batch_size=None`` picks as many prompts per forward as fit ``memory_budget``
    (:func:`ivlens.estimate.model.forward_batch_size`; a resumed collection keeps the batch size it was started
    with). ``units``: the run's loop whose numbering and shard ownership the batches join (:meth:`UnitLoop.on`:
    numbered on from earlier models' batches; a shard, :mod:`ivlens.sharding`, collects only its own, the labels
    and meta are written whole); default: every batch, numbered from 0.

    Returns:
        the :class:`IVStore` at ``out``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layers = list(range(loaded.n_layers)) if layers is None else sorted(layers)
    tok = loaded.tokenizer
    prompts = [instruction_prompt(tok, r.instruction, fmt) for r in rows]
    labels = pd.DataFrame([r.to_dict() for r in rows])
    labels.insert(0, "row", np.arange(len(rows)))
    labels["n_tokens"] = [len(p) for p in prompts]
    labels["t_inst"] = [p.t_inst for p in prompts]
    old = out / "meta.json"
    if batch_size is None:
        prev = json.loads(old.read_text()).get("batch_size") if resume and old.exists() else None
        batch_size = prev or forward_batch_size(loaded, max((len(p) for p in prompts), default=1), memory_budget)
    meta = {"layers": layers, "d_model": loaded.d_model, "n": len(rows), "fmt": fmt, "batch_size": batch_size,
            "model": loaded.describe()}
    if resume and old.exists():
        prev = json.loads(old.read_text())
        if {k: prev.get(k) for k in ("layers", "n", "batch_size", "fmt")} != \
                {k: meta[k] for k in ("layers", "n", "batch_size", "fmt")}:
            raise ValueError(f"{out}: cannot resume, the stored IVs were collected with other settings")
    else:
        for s in out.glob("shard-*.safetensors"):
            s.unlink()
    atomic_write_parquet(out / "labels.parquet", labels)
    atomic_write_json(out / "meta.json", meta)

    def batch_unit_file(unit: Unit[range]) -> bytes:
        idx = unit.work
        batch = pad_left([prompts[i] for i in idx], tok.pad_token_id).to(loaded.device)
        cols = [batch.column(j, prompts[i].t_inst) for j, i in enumerate(idx)]
        resid = read_resid(loaded, batch, cols, layers)  # [layer, batch, d_model]
        return st_save({"resid": resid.contiguous(), "rows": torch.tensor(list(idx), dtype=torch.long)})

    files = UnitFiles(out, UNIT_FILE)
    loop = units.on(files) if units is not None else UnitLoop(files)  # a unit: one batch (without resume: none left)
    units = loop.number((f"{b:05d}", idx) for b, idx in enumerate(_batches(len(rows), batch_size)))
    n_batches = loop.run(units, batch_unit_file)
    log.info("%s: %d instruction vectors at %d layers (%d new batches) in %s", loaded.name, len(rows),
             len(layers), n_batches, out)
    return IVStore(out)
