"""``--shard i/n`` on every sweep and ``ivlens merge``: the merged shards equal the unsharded run, table for
table, on tiny models (two models, so that units of work of both land in each shard)."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from ivlens.analyses import ANALYSES, run_spec
from ivlens.cli import app
from ivlens.eval import EvalSpec
from ivlens.merge import MergeError, merge_runs
from ivlens.patching import PatchSpec
from ivlens.probing import ProbeSpec
from ivlens.runs import RunDir
from ivlens.sharding import Shard
from ivlens.specs import SpecError
from ivlens.steering import SteerSpec
from ivlens.tracing import TraceSpec


def test_a_shard_owns_every_nth_unit():
    shards = [Shard.parse(f"{i}/3") for i in range(3)]
    assert [[s.owns(u) for s in shards].index(True) for u in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(SpecError, match="--shard: '3/3': give i/n with 0 ≤ i < n"):
        EvalSpec(models=("m",), task="adjectives", shard="3/3")
    with pytest.raises(SpecError, match="--shard splits the samples of --compare"):
        TraceSpec(models=("m",), task="adjectives", shard="0/2")


SWEEPS = {
    "eval": (EvalSpec, {"task": "adjectives", "samples": 3, "chunk_size": 1}, ["results", "summary", "decides"]),
    "patch": (PatchSpec, {"task": "adjectives", "subtask": "adj_ant", "layers": "pairs", "samples": 3,
                          "chunk_size": 1, "figures": False},
              ["patch", "baselines", "single_layer", "interactions", "additivity", "strongest_sets", "linearity"]),
    # --screen: every shard ranks the sets on all the samples, so they screen the same sets (merge checks the bytes)
    "patch-screen": (PatchSpec, {"task": "adjectives", "subtask": "adj_ant", "layers": "triplets", "screen": 2,
                                 "samples": 3, "chunk_size": 1, "figures": False},
                     ["patch", "screen", "interactions", "linearity"]),
    "probe": (ProbeSpec, {"tasks": ("adjectives", "animals"), "layers": "0,-1", "max_per_subtask": 6,
                          "batch_size": 4, "folds": 2}, ["instructions", "probe_accuracy", "projections",
                                                         "similarity"]),
    # steer: 2 chunks per model, so shard 1/3 (m0c1) and 2/3 (m1c0) each skip the other model's IVs and vectors
    "steer": (SteerSpec, {"task": "adjectives", "subtask": "adj_ant", "alphas": "0,2", "positions": "first,all",
                          "layers": "0,-1", "samples": 3, "chunk_size": 2, "max_per_subtask": 4, "figures": False},
              ["steer", "baselines", "dose_response", "vectors"]),
    "trace": (TraceSpec, {"task": "animals", "compare": True, "samples": 2, "top_k": 5, "beam": 8},
              ["compare", "sample_paths", "selectivity"]),
}


#: every other analysis whose spec shards: its registry entry's example, every table of the run compared
SWEEPS.update({a.name: (a.spec, a.example, None) for a in ANALYSES
               if a.example and a.name not in SWEEPS and a.spec(models=("m",), **a.example).shardable})


def test_every_registered_sharded_analysis_is_checked():
    """The organism build is one unit of work (its spec is never shardable); every other analysis shards and is
    checked here, or its spec refuses --shard (an analysis added through the registry, by its example)."""
    for a in ANALYSES:
        if a.name == "organism" or a.name in SWEEPS:
            continue
        assert a.example, f"{a.name}: give its registry entry an example (ivlens.analyses.Analysis.example)"
        with pytest.raises(SpecError, match="--shard"):
            a.spec(models=("m",), shard="0/2", **a.example)
    assert all(cls(models=("m",), **opts).shardable for cls, opts, _ in SWEEPS.values())


@pytest.mark.cli  # four runs of each analysis end to end, and a merge
@pytest.mark.parametrize("analysis", list(SWEEPS))
def test_merged_shards_equal_the_unsharded_run(two_tiny_dirs, tmp_path, analysis):
    spec_cls, options, tables = SWEEPS[analysis]
    spec = spec_cls(models=two_tiny_dirs, **options)
    whole = run_spec(spec, out=tmp_path / "whole")
    shards = [run_spec(spec.model_copy(update={"shard": f"{i}/3"}), out=tmp_path / f"shard{i}") for i in range(3)]
    for s in shards:
        m = RunDir.open(s).manifest
        assert m["status"] == "shard" and m["spec_hash"] == spec.hash()
    merged = merge_runs(list(reversed(shards)), tmp_path / "merged")
    a, b = RunDir.open(whole), RunDir.open(merged)
    assert b.manifest["status"] == "finished" and b.manifest["spec"]["shard"] is None
    for t in tables or sorted(p.stem for p in a.path.glob("*.parquet")):
        pd.testing.assert_frame_equal(a.read_table(t), b.read_table(t), check_exact=True, obj=t)
    for f in sorted((a.path / "vectors").glob("*")):  # steer: every shard steered with the unsharded directions
        held = [s / "vectors" / f.name for s in shards if (s / "vectors" / f.name).is_file()]
        assert held and all(h.read_bytes() == f.read_bytes() for h in held), f.name


@pytest.mark.cli
def test_merge_refuses_incomplete_or_mixed_shards(two_tiny_dirs, tmp_path):
    spec = EvalSpec(models=two_tiny_dirs[:1], task="animals", samples=2, chunk_size=1)
    s0 = run_spec(spec.model_copy(update={"shard": "0/2"}), out=tmp_path / "s0")
    other = run_spec(spec.model_copy(update={"samples": 3, "shard": "1/2"}), out=tmp_path / "other")
    with pytest.raises(MergeError, match="missing 1/2"):
        merge_runs([s0], tmp_path / "m1")
    with pytest.raises(MergeError, match=r"a shard of another run .*--samples 2 → 3"):
        merge_runs([s0, other], tmp_path / "m2")
    r = CliRunner().invoke(app, ["merge", str(s0), "--out", str(tmp_path / "m3")], env={"COLUMNS": "300"})
    assert r.exit_code == 2 and "missing 1/2" in r.output


CLI_SWEEPS = {"eval": (["--task", "animals"], "results"),
              "steer": (["--alphas", "0,1", "--layers", "0", "--positions", "first", "--max-per-subtask", "4",
                         "--no-figures"], "steer")}


@pytest.mark.cli
@pytest.mark.parametrize("command", list(CLI_SWEEPS))
def test_the_cli_shards_and_merges(two_tiny_dirs, tmp_path, command):
    options, table = CLI_SWEEPS[command]
    common = [command, "--model", two_tiny_dirs[0], *options, "--samples", "2", "--chunk-size", "1"]
    runner = CliRunner()
    for i in range(2):
        r = runner.invoke(app, [*common, "--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}")])
        assert r.exit_code == 0 and "shard" in r.output and "ivlens merge" in r.output, r.output
    r = runner.invoke(app, ["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert len(RunDir.open(tmp_path / "m").read_table(table)) == len(
        RunDir.open(tmp_path / "s0").read_table(table)) * 2
