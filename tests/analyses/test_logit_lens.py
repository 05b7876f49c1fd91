"""``ivlens logit-lens``: the IVs' logit lens against a plain-PyTorch reference on tiny models, its tables, its report
section, its dry run and its bad input (the analysis added through the registry alone: docs/contributing.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from ivlens.analyses import BY_NAME, report_sections, run_spec
from ivlens.analyses.logit_lens import LogitLensSpec
from ivlens.analyses.logit_lens.lens import label_mass, lens_probs, top_tokens
from ivlens.analyses.logit_lens.run import model_rows
from ivlens.cli import app
from ivlens.models.load import load_model
from ivlens.probing.instructions import instruction_set
from ivlens.report import build_report
from ivlens.runs import RunDir
from ivlens.tasks import instruction_prompt, load_task

#: families whose HF module tree names the final norm and unembedding plainly (the reference reads them directly)
REFERENCE_ARCHS = ("olmo2", "llama", "qwen2", "gemma2")


@pytest.mark.parametrize("arch", REFERENCE_ARCHS)
def test_the_lens_equals_a_plain_pytorch_reference_at_every_layer(arch, tiny_dir):
    """IV at layer l = HF's hidden_states[l + 1] at T_inst; its lens = softmax(lm_head(norm(iv))) (soft-capped where
    the config caps logits); at the last layer the lens is the model's own next-token distribution."""
    loaded = load_model(str(tiny_dir(arch, n_layers=3, d_model=32)))
    spec = LogitLensSpec(models=("m",), task="adjectives", max_per_subtask=2, batch_size=3)
    layers = list(range(loaded.n_layers))
    mass, _ = model_rows(loaded, spec, layers)
    rows = instruction_set([load_task("adjectives")], max_per_subtask=2)
    hf = loaded.model
    for r in rows[:3]:
        p = instruction_prompt(loaded.tokenizer, r.instruction, "raw")
        ids = torch.tensor([p.input_ids])
        with torch.no_grad():
            out = hf(input_ids=ids, output_hidden_states=True)
        for layer in layers:
            iv = out.hidden_states[layer + 1][0, p.t_inst]
            if layer == layers[-1]:  # HF's last entry is after the final norm: take the block output by hook
                iv = _last_block_output(hf, ids)[0, p.t_inst]
            z = hf.lm_head(hf.model.norm(iv))
            cap = getattr(hf.config, "final_logit_softcapping", None)
            if cap:
                z = torch.tanh(z / cap) * cap
            ref = torch.softmax(z.float(), -1)
            mine = lens_probs(loaded.adapter, iv[None])[0]
            torch.testing.assert_close(mine, ref, atol=1e-6, rtol=1e-5)
            if layer == layers[-1] and p.t_inst == len(p.input_ids) - 1:
                torch.testing.assert_close(mine, torch.softmax(out.logits[0, -1].float(), -1), atol=1e-6, rtol=1e-5)
    assert set(mass.layer) == set(layers) and len(mass) == len(rows) * len(layers)


def _last_block_output(hf, ids):
    seen = {}
    handle = hf.model.layers[-1].register_forward_hook(lambda _m, _i, o: seen.setdefault("h", o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            hf(input_ids=ids)
    finally:
        handle.remove()
    return seen["h"]


def test_label_mass_and_top_tokens():
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    torch.testing.assert_close(label_mass(probs, [3, 1, 3]), torch.tensor([0.6, 0.5]))
    index, prob = top_tokens(probs, 3)
    assert index.tolist() == [3, 2, 1]  # mean 0.325, 0.275, 0.225, 0.175
    torch.testing.assert_close(prob, torch.tensor([0.325, 0.275, 0.225], dtype=torch.float64))
    index, _ = top_tokens(torch.full((2, 4), 0.25), 2)
    assert index.tolist() == [0, 1]  # ties: the lower id first


def test_a_run_writes_consistent_tables_and_a_report_section(two_tiny_dirs, tmp_path):
    spec = LogitLensSpec(models=two_tiny_dirs, task="adjectives", layers="0,-1", max_per_subtask=3, n_boot=200)
    path = run_spec(spec, out=tmp_path / "run")
    run = RunDir.open(path)
    assert run.manifest["status"] == "finished" and run.manifest["command"] == "logit-lens"
    s, mass, top = run.read_table("summary"), run.read_table("mass"), run.read_table("top_tokens")
    assert len(s) == 2 * 2 * 2  # models × subtasks × layers
    np.testing.assert_allclose(s["diff"], s.own_mass - s.other_mass, atol=1e-12)
    assert ((s.diff_lo <= s["diff"] + 1e-12) & (s["diff"] <= s.diff_hi + 1e-12)).all()
    assert (s.own_mass.between(0, 1) & s.other_mass.between(0, 1)).all()
    first = s.model == s.control
    assert s[first].vs_control.isna().all() and s[~first].vs_control.notna().all()
    mean = mass.groupby(["model", "subtask", "layer"], sort=False).own_mass.mean().to_numpy()
    np.testing.assert_allclose(s.own_mass.to_numpy(), mean)
    assert (top.groupby(["model", "subtask", "layer"]).size() == spec.top_k).all()
    page = build_report(path, tmp_path / "report.html", sections=report_sections()).read_text()
    assert 'id="logit-lens"' in page and "The logit lens of the IVs" in page
    default = build_report(path, tmp_path / "default.html").read_text()  # no sections= given: the registry's
    assert 'id="logit-lens"' in default and "The logit lens of the IVs" in default


def test_registered_with_a_generated_command_and_dry_run(tiny_dir):
    assert BY_NAME["logit-lens"].spec is LogitLensSpec
    model = str(tiny_dir("olmo2", n_layers=2, d_model=32))
    r = CliRunner().invoke(app, ["logit-lens", "--model", model, "--task", "animals", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "logit-lens" in r.output and "peak memory" in r.output


@pytest.mark.parametrize("args, expected", [
    (["--task", "adjectives", "--layers", "9"], "--layers: layer 9 is out of range"),
    (["--task", "adjectives", "--shard", "0/2"], "--shard"),
    (["--task", "no-such-task"], "no-such-task"),
    (["--task", "adjectives", "--top-k", "0"], "--top-k"),
])
def test_bad_input_is_one_line_and_exit_2(args, expected, tiny_dir, tmp_path):
    model = str(tiny_dir("olmo2", n_layers=2, d_model=32))
    r = CliRunner().invoke(app, ["logit-lens", "--model", model, *args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert expected in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1, r.output


def test_same_seed_same_bytes(tiny_dir, tmp_path):
    model = str(tiny_dir("olmo2", n_layers=2, d_model=32))
    spec = LogitLensSpec(models=(model,), task="animals", max_per_subtask=3, n_boot=200, seed=4)
    a, b = (run_spec(spec, out=tmp_path / x) for x in "ab")
    for name in ("mass", "summary", "top_tokens"):
        assert (a / f"{name}.parquet").read_bytes() == (b / f"{name}.parquet").read_bytes(), name
    pd.testing.assert_frame_equal(pd.read_parquet(a / "summary.parquet"), pd.read_parquet(b / "summary.parquet"))
