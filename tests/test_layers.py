"""The import graph of ivlens, scanned independently of import-linter: every ``import`` of every module, those inside
functions and under ``TYPE_CHECKING`` included, must form no cycle; and the layers of ``[tool.importlinter]`` hold
(checked by ``lint-imports`` in scripts/test.sh, and here when it is installed)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ivlens"


def modules() -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is_package)}`` for every module of ivlens."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> list[str]:
    """The ivlens modules an import statement imports: ``from a import b`` is module ``a.b`` when that is a module,
    else ``a``; relative imports are resolved against ``module``."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    subs = [f"{prefix}.{a.name}" for a in node.names if f"{prefix}.{a.name}" in known]
    return subs + ([prefix] if len(subs) < len(node.names) and prefix in known else [])


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported module: line}}`` over every import statement, wherever it stands."""
    mods = modules()
    graph: dict[str, dict[str, int]] = {m: {} for m in mods}
    for name, (path, is_package) in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in imported(name, is_package, node, set(mods)):
                    if target != name:
                        graph[name].setdefault(target, node.lineno)
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_the_scan_finds_a_cycle_and_resolves_relative_imports():
    assert find_cycle({"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 1, "b": 2}}) is None
    known = {"ivlens.x", "ivlens.x.y", "ivlens.z"}
    node = ast.parse("from . import y\nfrom ..z import w").body
    assert imported("ivlens.x", True, node[0], known) == ["ivlens.x.y"]
    assert imported("ivlens.x.y", False, node[1], known) == ["ivlens.z"]


def test_no_import_cycle_among_ivlens_modules_in_function_imports_included():
    graph = import_graph()
    assert len(graph) > 100 and sum(map(len, graph.values())) > 300  # the scan sees the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(
        f"{a} (l.{graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)) + f" → {cycle[-1]}"


def test_matplotlib_backend_is_chosen_in_one_place():
    users = sorted(str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
                   if "matplotlib.use(" in p.read_text(encoding="utf-8"))
    assert users == ["ivlens/plots.py"]


@pytest.mark.cli
def test_the_cli_imports_no_plotting_or_fitting_library():
    """``ivlens --help``, a study's coordinating process and a step that draws nothing import neither matplotlib nor
    scikit-learn nor scipy.stats (about 1.9 s of every such process on 2 cores): each is imported where it is used
    (``ivlens.plots.plt`` on first use, scikit-learn in the probe's functions, scipy.stats in the interaction tests).
    """
    code = ("import sys, ivlens.cli; "
            "print(sorted(m for m in ('matplotlib', 'sklearn', 'scipy.stats') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == "[]", done.stdout


def test_the_layers_contract_holds():
    lint = Path(sys.executable).parent / "lint-imports"
    lint = str(lint) if lint.exists() else shutil.which("lint-imports")
    assert lint, "import-linter is missing: bash scripts/setup_env.sh (it is in the dev extra)"
    r = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]
