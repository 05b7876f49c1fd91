"""``run_logit_lens``: the logit lens of every model's IVs, layer by layer, into one run directory.

Units of work (:mod:`ivlens.units`): one model (its rephrasings' IVs at every chosen layer, read through its
final norm and unembedding); each writes its rows as unit files of ``mass`` and ``top_tokens`` (resumable with
``--resume``), then the run writes:

- ``mass.parquet``: ``model, task, subtask, layer, rephrasing, instruction, own_tokens, other_tokens, own_mass,
  other_mass`` per rephrasing: the probability on the first tokens of the subtask's own labels and on those of the
  other subtasks' labels; a token that starts labels of both is counted in neither (``*_tokens``: how many);
- ``summary.parquet``: ``model, task, subtask, layer, n, own_tokens, other_tokens, own_mass, own_lo, own_hi, other_mass, other_lo, other_hi,
  diff, diff_lo, diff_hi, control, vs_control, vs_control_lo, vs_control_hi``: means over rephrasings with percentile bootstrap intervals (rephrasings resampled, own
  and other paired); the other subtask's labels are the within-model control, and the first model (a study's
  base) the control for training: ``vs_control`` is a model's ``diff`` less the control's, paired by rephrasing;
- ``top_tokens.parquet``: ``model, task, subtask, layer, rank, token_id, token, prob, own_label, other_label``: the
  ``top_k`` tokens of the mean logit-lens distribution.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ivlens.api import check_run_target, config_layer_count, load_spec_models, start_run
from ivlens.models.load import LoadedModel, check_model_files
from ivlens.probing.collect import parse_layers, read_resid
from ivlens.probing.instructions import instruction_set
from ivlens.runs import RunDir, slug
from ivlens.specs import SpecError
from ivlens.tasks import load_task
from ivlens.tasks.prompts import instruction_prompt, label_space_first_ids, pad_left
from ivlens.tasks.requirements import require_rephrasings
from ivlens.tracing.selectivity import bootstrap_mean_ci
from ivlens.units import TablePieces, Unit, UnitLoop, unit_key

from .lens import label_mass, lens_probs, top_tokens
from .spec import LogitLensSpec

log = logging.getLogger(__name__)


@dataclass
class LogitLensResult:
    """What :func:`run_logit_lens` produced: the run directory and its summary table."""

    run: RunDir
    summary: pd.DataFrame


def model_rows(loaded: LoadedModel, spec: LogitLensSpec, layers: list[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One model's ``mass`` and ``top_tokens`` rows (see the module docstring)."""
    task = load_task(spec.task)
    rows = instruction_set([task], max_per_subtask=spec.max_per_subtask)
    adapter = loaded.adapter
    tok = loaded.tokenizer
    prompts = [instruction_prompt(tok, r.instruction, spec.format) for r in rows]
    ivs = []  # [n, layer, d_model] in row order
    for start in range(0, len(rows), spec.batch_size):
        part = prompts[start:start + spec.batch_size]
        batch = pad_left(part, tok.pad_token_id).to(loaded.device)
        cols = [batch.column(j, p.t_inst) for j, p in enumerate(part)]
        resid = read_resid(loaded, batch, cols, layers)  # [layer, batch, d_model]
        ivs.append(resid.transpose(0, 1))  # [batch, layer, d_model]
    ivs_all = torch.cat(ivs)  # [n, layer, d_model]
    ids = {name: label_space_first_ids(tok, prompts[0], list(sub.label_space)) for name, sub in task.subtasks.items()}
    mass, tops = [], []
    for li, layer in enumerate(layers):
        probs = lens_probs(adapter, ivs_all[:, li].to(loaded.model.dtype))  # [n, d_vocab]
        for name in task.subtasks:
            sel = [i for i, r in enumerate(rows) if r.subtask == name]
            others = {i for o, v in ids.items() if o != name for i in v}
            own, other = sorted(set(ids[name]) - others), sorted(others - set(ids[name]))  # shared: in neither
            p = probs[sel]
            own_m = label_mass(p, own).numpy() if own else np.zeros(len(sel))
            other_m = label_mass(p, other).numpy() if other else np.zeros(len(sel))
            for j, i in enumerate(sel):
                mass.append({"model": loaded.name, "task": task.name, "subtask": name, "layer": layer,
                             "rephrasing": rows[i].index, "instruction": rows[i].instruction,
                             "own_tokens": len(own), "other_tokens": len(other),
                             "own_mass": float(own_m[j]), "other_mass": float(other_m[j])})
            index, prob = top_tokens(p, spec.top_k)
            for rank, (t, q) in enumerate(zip(index.tolist(), prob.tolist(), strict=True), start=1):
                tops.append({"model": loaded.name, "task": task.name, "subtask": name, "layer": layer, "rank": rank,
                             "token_id": t, "token": tok.decode([t]), "prob": q, "own_label": t in ids[name],
                             "other_label": t in others})
    return pd.DataFrame(mass), pd.DataFrame(tops)


def summarize(mass: pd.DataFrame, n_boot: int, level: float, seed: int) -> pd.DataFrame:
    """``summary`` rows from ``mass`` rows: means over rephrasings and bootstrap intervals; own, other and the
    control's difference paired by rephrasing (every model runs the same rephrasings)."""
    rng = np.random.default_rng(seed)
    control = mass.model.iloc[0]
    diff = mass.own_mass - mass.other_mass
    keys = ["task", "subtask", "layer", "rephrasing"]
    base = mass.loc[mass.model == control, keys].assign(control_diff=diff[mass.model == control].to_numpy())
    mass = mass.assign(diff=diff).merge(base, on=keys, how="left", sort=False)
    out = []
    for (model, task, subtask, layer), g in mass.groupby(["model", "task", "subtask", "layer"], sort=False):
        x = np.stack([g.own_mass, g.other_mass, g["diff"], g["diff"] - g.control_diff], axis=1)  # [n, 4]
        lo, hi = bootstrap_mean_ci(x, level, rng, n_boot)
        m = x.mean(0)
        same = model == control
        out.append({"model": model, "task": task, "subtask": subtask, "layer": int(layer), "n": len(g),
                    "own_tokens": int(g.own_tokens.iloc[0]), "other_tokens": int(g.other_tokens.iloc[0]),
                    "own_mass": m[0], "own_lo": lo[0], "own_hi": hi[0],
                    "other_mass": m[1], "other_lo": lo[1], "other_hi": hi[1],
                    "diff": m[2], "diff_lo": lo[2], "diff_hi": hi[2], "control": control,
                    "vs_control": np.nan if same else m[3], "vs_control_lo": np.nan if same else lo[3],
                    "vs_control_hi": np.nan if same else hi[3]})
    return pd.DataFrame(out)


def run_logit_lens(spec: LogitLensSpec, *, models: list[LoadedModel] | None = None, out: str | Path | None = None,
                   resume: str | Path | None = None) -> LogitLensResult:
    """The logit lens of ``spec.task``'s IVs in every model, layer by layer (module docstring)."""
    check_run_target(spec, out, resume)  # before any model loads
    task = load_task(spec.task)
    if len(task.subtasks) < 2:
        raise SpecError(f"--task {spec.task}: it has one subtask ({', '.join(task.subtasks)}); the logit lens "
                        "compares a subtask's labels with another's: give a task with two or more")
    require_rephrasings([task], n=2, analysis="ivlens logit-lens")
    names = [m.name for m in models] if models is not None else list(spec.models)
    for i, name in enumerate(names):  # bad model files and layers refused before the run directory is made
        if models is None:
            check_model_files(name, gguf_file=spec.gguf_file, trust_remote_code=spec.trust_remote_code)
        n_layers = models[i].n_layers if models is not None else config_layer_count(name, spec)
        if n_layers is not None:
            parse_layers(spec.layers, n_layers)
    run = start_run(spec, "+".join(slug(n) for n in names)[:60], out=out, resume=resume, task=task.name)
    pieces = TablePieces(run, ("top_tokens", "mass"))

    def model_tables(unit: Unit[int]) -> dict[str, pd.DataFrame]:
        i = unit.work
        loaded = models[i] if models is not None else load_spec_models([names[i]], spec, None)[0]
        layers = parse_layers(spec.layers, loaded.n_layers)
        mass, tops = model_rows(loaded, spec, layers)
        log.info("logit-lens %s: %d rephrasings at %d layers", loaded.name, len(mass) // max(len(layers), 1), len(layers))
        return {"top_tokens": tops, "mass": mass}

    loop = UnitLoop(pieces)  # a unit: one model
    loop.run(loop.number((unit_key(i), i) for i in range(len(names))), model_tables)
    mass = pieces.read("mass")
    summary = summarize(mass, spec.n_boot, spec.level, spec.seed)
    run.write_table("mass", mass)
    run.write_table("summary", summary)
    run.write_table("top_tokens", pieces.read("top_tokens"))
    run.finish()
    return LogitLensResult(run, summary)
