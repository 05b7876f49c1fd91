"""A battery of ordinary mistakes across every command (issue 14, "Done when": at least 25 bad invocations):
each ends in exactly one ``error:`` line on stderr naming the option or file, exit code 2 and no traceback.

The commands run in-process through :func:`ivlens.cli.main`, the console script itself (so typer's own usage
errors go through the same boundary as ivlens's), on a tiny random OLMo-2 directory.
"""

from __future__ import annotations

import sys

import pytest

from ivlens.cli import main

M = "{model}"  # replaced by the tiny model's directory
P = "{probe}"  # a probe run directory holding one probe (class adj_ant, layer 1) of a model named "tiny"
V = "{vector}"  # a .npy vector of 5 numbers (the tiny model's d_model is 64)
V64 = "{vector64}"  # a .npy vector of 64 numbers

BATTERY: list[tuple[list[str], str]] = [
    # bad choices (typer checks Literal options and lists the allowed values)
    (["eval", "-m", M, "--task", "adjectives", "--format", "foo"], "'foo' is not one of"),
    (["eval", "-m", M, "--task", "adjectives", "--dtype", "float8"], "'float8' is not one of"),
    (["eval", "-m", M, "--task", "adjectives", "--score", "last-token"], "'last-token' is not one of"),
    (["patch", "-m", M, "--mode", "sideways"], "'sideways' is not one of"),
    (["patch", "-m", M, "--target", "elsewhere"], "'elsewhere' is not one of"),
    (["probe", "-m", M, "--varying", "x"], "'x' is not one of"),
    (["trace", "-m", M, "--method", "sideways"], "'sideways' is not one of"),
    (["organism", "build", "--size", "huge"], "'huge' is not one of"),
    (["organism", "build", "--variant", "other"], "'other' is not one of"),
    # malformed values
    (["patch", "-m", M, "--samples", "many"], "--samples"),
    (["eval", "-m", M, "--task", "adjectives", "--samples", "0"], "--samples"),
    (["eval", "-m", M, "--task", "adjectives", "--judge", "not a callable"], "--judge"),
    (["eval", "-m", M, "--task", "adjectives", "--device", "tpu"], "--device"),
    (["patch", "-m", M, "--memory-budget", "lots"], "lots"),
    (["patch", "-m", M, "--positions", "zzz"], "zzz"),
    # out-of-range indices
    (["patch", "-m", M, "--layers", "0,99", "--no-figures"], "99"),
    (["probe", "-m", M, "--layers", "0,99"], "99"),
    (["trace", "-m", M, "--task", "adjectives", "--sample", "9999"], "--sample 9999 is out of range"),
    # missing files and names
    (["eval", "-m", "/no/such/model", "--task", "adjectives"], "/no/such/model"),
    (["eval", "-m", M, "--task", "no-such-task"], "unknown task 'no-such-task'"),
    (["eval", "-m", M, "--task", "adjectives", "--subtask", "nope"], "nope"),
    (["probe", "-m", M, "--tasks", "no-such-task"], "unknown task 'no-such-task'"),
    (["tasks", "show", "no-such-task"], "unknown task 'no-such-task'"),
    (["tasks", "check", "/no/such/spec.yaml"], "/no/such/spec.yaml"),
    (["patch", "--resume", "/no/such/run"], "no manifest.json"),
    (["report", "/no/such/run"], "/no/such/run"),
    # impossible combinations of options
    (["eval", "-m", M, "--task", "adjectives", "--split", "heldout"], "--split heldout needs a model organism"),
    (["trace", "-m", M], "give either --prompt TEXT or --task T"),
    (["eval", "-m", M], "--task"),
    # --remote (NDIF): no key, a local model, an option it cannot honour
    (["patch", "-m", "allenai/OLMo-2-0425-1B", "--remote"], "--remote needs NDIF_API_KEY"),
    (["probe", "-m", M, "--remote"], "--model"),
    (["patch", "-m", "allenai/OLMo-2-0425-1B", "--remote", "--device", "cuda"], "--remote cannot honour --device"),
    # steer
    (["steer", "-m", M, "--alphas", "0,big"], "--alphas: cannot read"),
    (["steer", "-m", M, "--positions", "t_inst"], "t_inst needs an instruction"),
    (["steer", "-m", M, "--positions", "middle"], "'middle'"),
    (["steer", "-m", M, "--vectors", "mean,sideways"], "'sideways' is not one of mean, diff, probe:RUN_DIR"),
    (["steer", "-m", M, "--vectors", "probe:/no/such/run"], "/no/such/run is not a probe run directory"),
    (["steer", "-m", M, "--layers", "0,99", "--no-figures"], "99"),
    (["steer", "-m", M, "--subtask", "nope"], "nope"),
    (["steer", "-m", M, "--vectors", f"probe:{P}"], "has no probe of model"),  # the probed model is "tiny"
    (["steer", "-m", M, "--vectors", f"diff,probe:{P}@tiny", "--layers", "0,1"],
     "--layers: probe:"),
    (["steer", "-m", M, "--vectors", f"probe:{P}@tiny", "--layers", "0"], "(probed layers: 1); give --layers 1"),
    (["steer", "-m", M, "--vectors", f"means:{P}@tiny"], "is not a probe run directory (no ivs/ in it)"),
    (["steer", "-m", M, "--vectors", f"probe:{P}@tiny", "--task", "animals", "--subtask", "can_fly", "--layers", "1"],
     "is not a class of the probes"),
    # trace --readout: missing run, layer not probed, unknown class, wrong length, position past the prompt, ...
    (["trace", "-m", M, "--task", "adjectives", "--readout", "probe:/no/such/run:1:adj_ant"],
     "no directory /no/such/run; give the run directory of an `ivlens probe` run"),
    (["trace", "-m", M, "--task", "adjectives", "--readout", f"probe:{P}:2:adj_ant@tiny"],
     "layer 2 was not probed"),
    (["trace", "-m", M, "--task", "adjectives", "--readout", f"probe:{P}:1:nope@tiny"],
     "class 'nope' is not a class of the probes"),
    (["trace", "-m", M, "--task", "adjectives", "--readout", f"vector:{V}:1"], "give a vector of 64 numbers"),
    (["trace", "-m", M, "--task", "adjectives", "--readout", f"vector:{V64}:1", "--position", "999"],
     "--position 999 is past the prompt"),
    (["trace", "-m", M, "--prompt", "hello there", "--readout", f"vector:{V64}:1", "--position", "t_inst"],
     "--position t_inst: this prompt has no instruction"),
    (["trace", "-m", M, "--task", "adjectives", "--readout", f"vector:{V64}:9"], "layer 9 is outside a model"),
    (["trace", "-m", M, "--task", "adjectives", "--readout", "probe:x"], "--readout"),
    (["trace", "-m", M, "--task", "adjectives", "--position", "t_inst"], "give --readout too"),
    (["trace", "-m", M, "--task", "adjectives", "--compare", "--readout", f"vector:{V64}:1"],
     "--compare compares answer logits"),
]


def _readout_files(directory) -> dict[str, str]:
    """The probe run and vectors the read-out cases name."""
    import numpy as np

    from ivlens.probing.probes import LogisticProbe
    from ivlens.probing.weights import ProbeWeights

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(12, 64)), np.repeat([0, 1], 6)
    weights = ProbeWeights("tiny", 64)
    weights.add_probe("task:adjectives", "subtask", ["adj_ant", "adj_comp"], 1, LogisticProbe().fit(X, y))
    weights.write(directory / "probe", "tiny")
    np.save(directory / "v5.npy", np.ones(5))
    np.save(directory / "v64.npy", np.ones(64))
    return {P: str(directory / "probe"), V: str(directory / "v5.npy"), V64: str(directory / "v64.npy")}


@pytest.mark.parametrize(("args", "needle"), BATTERY, ids=[" ".join(a[:3]) + f" #{i}" for i, (a, _) in
                                                        enumerate(BATTERY)])
def test_bad_invocation_is_one_line_and_exit_2(args, needle, tiny_dir, tmp_path, monkeypatch, capsys):
    model = str(tiny_dir("olmo2"))
    capsys.readouterr()  # the fixture's own output (saving the tiny model) is not the command's
    argv = [a.replace(M, model) for a in args]
    if any("{" in a for a in argv):
        files = _readout_files(tmp_path)
        for key, value in files.items():
            argv = [a.replace(key, value) for a in argv]
    if argv[0] in ("eval", "patch", "probe", "trace", "steer") and "--resume" not in argv:
        argv += ["--out", str(tmp_path / "run")]
    monkeypatch.setattr(sys, "argv", ["ivlens", *argv])
    monkeypatch.setenv("COLUMNS", "400")  # one line, not wrapped by rich
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 2, (argv, err)
    assert "Traceback" not in err, (argv, err)
    assert len(lines) == 1 and lines[0].startswith("error:"), (argv, err)
    assert needle in lines[0], (argv, err)
    assert not (tmp_path / "run").exists(), "a refused invocation must not leave a run directory"


def test_the_battery_is_large_enough():
    assert len(BATTERY) >= 25
    commands = {a[0] for a, _ in BATTERY}
    assert commands >= {"eval", "patch", "probe", "trace", "organism", "tasks", "report"}
