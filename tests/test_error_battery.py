"""A battery of ordinary mistakes across every command (issue 14, "Done when": at least 25 bad invocations):
each ends in exactly one ``error:`` line on stderr naming the option or file, exit code 2 and no traceback.

The commands run in-process through :func:`ivlens.cli.main`, the console script itself (so typer's own usage
errors go through the same boundary as ivlens's), on a tiny random OLMo-2 directory.
"""

from __future__ import annotations

import re
import sys

import pytest
from bad_models import KINDS

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
    line = _one_error_line(argv, monkeypatch, capsys)
    assert needle in line, (argv, line)
    assert not (tmp_path / "run").exists(), "a refused invocation must not leave a run directory"


def _one_error_line(argv: list[str], monkeypatch, capsys, progress: str | None = None) -> str:
    """Run ``ivlens *argv`` in-process; assert exit code 2, no traceback and exactly one ``error:`` line on stderr
    (after lines matching the regex ``progress``, where given: a study's step lines); return that line."""
    monkeypatch.setattr(sys, "argv", ["ivlens", *argv])
    monkeypatch.setenv("COLUMNS", "400")  # one line, not wrapped by rich
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 2, (argv, err)
    assert "Traceback" not in err, (argv, err)
    if progress is not None:
        lines = [line for line in lines if not re.fullmatch(progress, line)]
    assert len(lines) == 1 and lines[0].startswith("error:"), (argv, err)
    return lines[0]


def test_the_battery_is_large_enough():
    assert len(BATTERY) >= 25
    commands = {a[0] for a, _ in BATTERY}
    assert commands >= {"eval", "patch", "probe", "trace", "organism", "tasks", "report"}


# ----------------------------------------------------------------------------- models that cannot be used (issue 21)
#: Every command that loads a model, with the options it needs besides --model.
MODEL_COMMANDS = {"eval": ["--task", "adjectives"], "patch": [], "probe": [], "steer": [],
                  "trace": ["--task", "adjectives"]}


#: Faults found only by reading the weights (transformers' loading report, its GGUF reader), not by the checks of
#: config and headers that run first: a study meets them at its first step (after that step's progress line), a
#: probe run after its run directory is made (it loads its models one at a time).
LOADING_KINDS = ("tensor missing", "tensor of another shape", "corrupt GGUF")


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory):
    from bad_models import make_bad_models

    return make_bad_models(tmp_path_factory.mktemp("bad-models"))


def _study(path, model: str) -> str:
    path.write_text(f"name: bad\nmodels:\n  m: {{model: '{model}'}}\ntasks: [adjectives]\n"
                    "analyses:\n  eval: {samples: 2}\n  patch: {samples: 2}\n")
    return str(path)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", [*MODEL_COMMANDS, "run"])
def test_unusable_model_is_one_line_in_every_command(bad_models, kind, command, tmp_path, monkeypatch, capsys):
    """A model that cannot be used (config, weights, GGUF, path) ends in one line naming the file, the fault and the
    fix, exit 2, before any run or study directory is made; a study refuses it before its first step."""
    case = bad_models[kind]
    capsys.readouterr()
    out = tmp_path / "out"
    if command == "run":
        argv = ["run", _study(tmp_path / "study.yaml", case.model), "--out", str(out)]
    else:
        argv = [command, "-m", case.model, *MODEL_COMMANDS[command], "--out", str(out)]
    by_loading = kind in LOADING_KINDS
    # a study's progress lines: how many steps run at a time (--jobs), each step as it starts
    progress = (r"\S+/\S+: running ivlens \w+|running \d+ steps at a time, .*" if command == "run" and by_loading
                else None)
    line = " ".join(_one_error_line(argv, monkeypatch, capsys, progress).split())
    for needle in case.needles:
        assert needle in line, (kind, command, line)
    assert not out.exists() or (by_loading and command in ("probe", "run"))


@pytest.mark.parametrize("kind", ["config not JSON", "truncated safetensors", "not GGUF (.gguf)", "corrupt GGUF"])
@pytest.mark.parametrize("command", [*MODEL_COMMANDS, "run"])
def test_dry_run_refuses_the_same_models(bad_models, kind, command, tmp_path, monkeypatch, capsys):
    """The dry run refuses a bad model in the run's own line (the file, the fault and the fix), exit 2."""
    case = bad_models[kind]
    capsys.readouterr()
    argv = (["run", _study(tmp_path / "study.yaml", case.model)] if command == "run"
            else [command, "-m", case.model, *MODEL_COMMANDS[command]])
    line = " ".join(_one_error_line([*argv, "--dry-run"], monkeypatch, capsys).split())
    for needle in case.needles:
        assert needle in line, (kind, command, line)


def test_a_gguf_whose_header_is_not_utf8_is_named_as_a_corrupt_gguf_not_a_json_config(tmp_path, monkeypatch, capsys):
    """transformers re-raises the GGUF reader's UnicodeDecodeError as "the config file … is not a valid JSON file":
    the dry run and the run name the GGUF file and the first error instead."""
    import struct

    f = tmp_path / "model.gguf"  # the magic, version 3, no tensors, one key of 4 bytes that are not UTF-8
    f.write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 4) + b"\xff\xfe\xfd\xfc" + struct.pack("<IQ", 8, 3) + b"abc")
    for extra in (["--dry-run"], ["--samples", "2", "--out", str(tmp_path / "run")]):
        line = _one_error_line(["eval", "-m", str(f), "--task", "adjectives", *extra], monkeypatch, capsys)
        assert f"{f} could not be read as a GGUF model (UnicodeDecodeError:" in line, (extra, line)
        assert "JSON" not in line and "truncated, corrupt" in line, (extra, line)


@pytest.mark.parametrize("command", [*MODEL_COMMANDS, "run", "merge", "organism", "report"])
@pytest.mark.parametrize("through", [False, True])
def test_out_that_is_an_existing_file_is_one_line(command, through, tiny_dir, tmp_path, monkeypatch, capsys):
    """--out naming an existing file (or a path through one) is refused before any model loads; a report's --out
    is a file, so there an existing directory is what is refused. The dry run refuses it too."""
    model = str(tiny_dir("olmo2", n_layers=2))
    capsys.readouterr()
    existing = tmp_path / "results.txt"
    existing.write_text("not a directory\n")
    out = existing / "run" if through else existing
    if command == "report":
        out = existing / "report.html" if through else tmp_path
        argv = ["report", str(tmp_path), "--out", str(out)]
    elif command == "run":
        argv = ["run", _study(tmp_path / "study.yaml", model), "--out", str(out)]
    elif command == "merge":
        argv = ["merge", str(tmp_path / "shard-0"), str(tmp_path / "shard-1"), "--out", str(out)]
    elif command == "organism":
        argv = ["organism", "build", "--out", str(out)]
    else:
        argv = [command, "-m", model, *MODEL_COMMANDS[command], "--out", str(out)]
    line = _one_error_line(argv, monkeypatch, capsys)
    assert f"--out {out}" in line, line
    if command == "report" and not through:
        assert "is an existing directory, not a file" in line
    else:
        assert (f"{existing} is a file, so" in line) if through else ("is an existing file, not a directory" in line)
    if command in (*MODEL_COMMANDS, "organism"):
        assert f"--out {out}" in _one_error_line([*argv, "--dry-run"], monkeypatch, capsys)
    assert existing.read_text() == "not a directory\n"


@pytest.mark.parametrize("dry_run", [False, True])
def test_study_file_that_is_not_utf8_is_one_line(tmp_path, dry_run, monkeypatch, capsys):
    study = tmp_path / "study.yaml"
    study.write_bytes("name: caf\xe9\nmodels: {}\n".encode("latin-1"))
    line = _one_error_line(["run", str(study), *(["--dry-run"] if dry_run else [])], monkeypatch, capsys)
    assert f"{study}: not UTF-8 text (byte 0xe9 at offset 9, line 1); save it as UTF-8" in line
