"""Memory budgets: parsing the accepted forms, clear errors, and the automatic default."""

from __future__ import annotations

import pytest

from ivlens.budget import CPU_DEFAULT_CAP, MIN_BUDGET, BudgetError, parse_bytes, resolve_memory_budget


@pytest.mark.parametrize("text,want", [
    ("4GB", 4 * 10**9), ("512MiB", 512 << 20), ("1.5G", int(1.5 * (1 << 30))), ("800000000", 800_000_000),
    ("2 gib", 2 << 30), ("100MB", 100 * 10**6), ("1e9", 10**9), (64 << 20, 64 << 20), ("1TiB", 1 << 40),
])
def test_parse_bytes(text, want):
    assert parse_bytes(text) == want


@pytest.mark.parametrize("text", ["lots", "4 GBs", "-1GB", "", "1.2.3G", "GB", "4 XB"])
def test_parse_bytes_errors_name_the_option_and_forms(text):
    with pytest.raises(BudgetError, match="--memory-budget.*512MiB"):
        parse_bytes(text)


def test_too_small_budget():
    with pytest.raises(BudgetError, match="minimum"):
        parse_bytes("1MB")


def test_resolve_default_and_requested():
    assert resolve_memory_budget("1GiB", "cpu") == 1 << 30
    auto = resolve_memory_budget(None, "cpu")
    assert MIN_BUDGET <= auto <= CPU_DEFAULT_CAP
    assert MIN_BUDGET <= resolve_memory_budget("auto", "auto") <= CPU_DEFAULT_CAP


def test_the_budget_script_calls_a_target_met_at_one_gemm_reading_only_borderline(monkeypatch):
    """benchmarks/budget.py's verdict: normalised at every GEMM rate read during the run (before and after), a target
    is met (``yes``), missed (``NO``) or met at some readings only (``borderline``)."""
    import importlib.util
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))  # the script imports its sibling gemm.py, as when run from there
    spec = importlib.util.spec_from_file_location("budget_script", benchmarks / "budget.py")
    budget = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(budget)
    assert budget.REFERENCE_GFLOPS == 56
    # 100 s at 200 and 300 GFLOP/s normalise to 357 and 536 s against an 8-minute (480 s) target
    assert budget.verdict(100.0, 480, (200.0, 300.0)) == "borderline"
    assert budget.verdict(100.0, 480, (200.0, 250.0)) == "yes"
    assert budget.verdict(1000.0, 900, (200.0, 300.0)) == "NO"
    assert budget.verdict(1000.0, None, (200.0, 300.0)) is None
