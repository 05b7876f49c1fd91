"""The report's set-up section: the models, runs, options and library versions of the study (every report draws
it first)."""

from __future__ import annotations

import pandas as pd

from . import html as h
from .context import Context, guard


def fmt_args(args: dict) -> str:
    return "  ".join(f"{k}={v}" for k, v in args.items() if v not in (None, "", [], {}))


@guard
def setup_section(ctx: Context) -> h.Section:
    """Setup."""
    s = h.Section("setup", "Setup")
    st = ctx.study
    s.add(h.para("What this is: a study of how language models follow instructions. An instruction's *instruction "
                 "vector* (IV) is the residual stream at the instruction's last token (T_inst). The analyses ask "
                 "whether the models follow the instructions (instruction following), at which layers an IV "
                 "patched into a prompt without instruction makes the model do the task (IV localisation), whether "
                 "IVs of differently worded instructions are linearly separable by task (probes), and whether "
                 "two instructions route the same query through different paths of the network (circuit "
                 "selectors). Checkpoints of one model after pretraining (base), supervised fine-tuning (SFT) and "
                 "preference optimisation (DPO) are shown side by side.".replace("*", "")))
    s.add(h.para(f"This report reads {len(st.runs)} run director{'y' if len(st.runs) == 1 else 'ies'} under "
                 f"`{st.root}`. Every table and figure below links the Parquet file it was drawn from; the paths "
                 "are relative to this page, so the page and its directory can be moved together."))
    models = pd.DataFrame([{"model": m.get("name"), "architecture": m.get("architecture"),
                            "layers": m.get("n_layers"), "d_model": m.get("d_model"), "heads": m.get("n_heads"),
                            "dtype": m.get("dtype"), "weight hash": m.get("weight_hash") or "–",
                            "path": m.get("path"), "revision": m.get("revision") or "–"} for m in st.models])
    if not models.empty:
        s.add(h.heading("Models"), h.table(models, "The checkpoints compared (weight hash: sha256 prefix of the "
                                                   "weight files, so two reports can be checked to use the same "
                                                   "weights)."))
    runs = pd.DataFrame([{"run": r.rel, "analysis": r.command, "task": r.manifest.get("task") or "–",
                          "seed": r.manifest.get("seed"), "status": r.manifest.get("status"),
                          "created": str(r.manifest.get("created") or "–").replace("T", " "), "wall s": r.manifest.get("wall_seconds"),
                          "git commit": (r.manifest.get("git_commit") or "–")[:10],
                          "options": fmt_args(r.args)} for r in st.runs])
    s.add(h.heading("Runs, tasks, seeds and options"),
          h.table(runs, "One row per run directory: the analysis (the `ivlens` command), its task, seed and options "
                        "as recorded in its manifest.json."))
    commands = "\n".join(f"ivlens {r.command}  {fmt_args(r.args)}" + (f"  # {r.rel}" if r.rel != "." else "")
                         for r in st.runs)
    s.add(h.para("The analyses and options of each run (the `ivlens` command and its options, from the manifests):"),
          h.pre(commands))
    libs = {}
    for r in st.runs:
        key = (r.manifest.get("ivlens_version"), r.manifest.get("python"), r.manifest.get("platform"),
               tuple(sorted((r.manifest.get("libraries") or {}).items())))
        libs.setdefault(key, []).append(r.rel)
    rows = []
    for (ver, py, plat, lib), rels in libs.items():
        rows.append({"runs": ", ".join(rels) if len(libs) > 1 else "all", "ivlens": ver, "python": py,
                     **{k: v or "–" for k, v in lib}, "platform": plat})
    s.add(h.heading("Library versions"), h.table(pd.DataFrame(rows), "Versions recorded in the manifests."))
    if st.unfinished:
        s.add(h.caveat("Not finished, so not reported: " + ", ".join(f"{r.rel} ({r.command})" for r in st.unfinished)
                       + ". Resume them (`--resume RUN`) and rebuild the report."))
    return s

