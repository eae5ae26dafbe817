"""The shape of the code: no import cycle between app's packages, and a command line that starts without the
valuation library (torch, POT, torch_geometric)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"
HEAVY = ("torch", "ot", "torch_geometric")


def _unit(module: str) -> str:
    """The unit a module belongs to: ``app.<package>`` for a package's modules, ``app.<module>`` for top-level
    modules (``app.cli``, ``app.config``, ``app.queue``, ``app.storage``)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every app module ``path`` imports, at the top or inside a function (a lazy import is still a dependency)."""
    tree = ast.parse(path.read_text(), str(path))
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("app")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                    else []))
            if base == "app":  # from app import queue, __version__
                found |= {f"app.{a.name}" for a in node.names if (APP / a.name).exists() or
                          (APP / f"{a.name}.py").exists()}
            elif base.startswith("app."):
                found.add(base)
    return found


def unit_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in APP.rglob("*.py"):
        source = _unit(_module_name(path))
        for target in _imports(path):
            unit = _unit(target)
            if unit != source and unit != "app":
                graph[source].add(unit)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if state.get(nxt) is None and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_app_packages():
    graph = unit_graph()
    units = set(graph) | {u for targets in graph.values() for u in targets}
    assert {"app.data", "app.valuation", "app.methods", "app.api", "app.worker", "app.shares"} <= units
    assert _cycle(graph) is None, " → ".join(_cycle(graph) or [])
    # the layering the design describes
    assert "app.valuation" not in graph["app.data"] and "app.methods" not in graph["app.valuation"]
    assert not graph["app.valuation"] & {"app.api", "app.services", "app.db", "app.worker", "app.commands"}


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["keys", "--help"], ["db", "--help"],
                                  ["value", "data-shapley", "--help"], ["keys", "list", "--help"]])
def test_the_command_line_starts_without_the_valuation_library(argv):
    code = ("import sys\n"
            "from app.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"}).stdout
    assert "LOADED []" in out, out[-500:]


def test_a_valuation_run_on_csv_files_does_not_import_pandas(tmp_path):
    """pyarrow's ``to_numpy`` imports pandas on its first call (0.3 s of a run's start); the readers do without."""
    rng = np.random.default_rng(0)
    for name, n in (("buyer.csv", 40), ("seller.csv", 30)):
        x = rng.normal(size=(n, 3))
        rows = [",".join(["a", "b", "c", "label"])] + [",".join(f"{v:.6f}" for v in r) + f",{i % 2}"
                                                        for i, r in enumerate(x)]
        (tmp_path / name).write_text("\n".join(rows) + "\n")
    argv = ["value", "data-shapley", "--buyer", str(tmp_path / "buyer.csv"), "--seller", str(tmp_path / "seller.csv"),
            "--max-permutations", "4", "--workers", "1", "--no-progress", "--json"]
    out = run_cli_listing_modules(argv, ("pandas",))
    assert '"method": "data-shapley"' in out and "LOADED []" in out, out[-500:]


def run_cli_listing_modules(argv: list[str], modules: tuple[str, ...]) -> str:
    """Run ``appraise ARGV`` in a fresh interpreter (it must succeed); its stdout, then a line ``LOADED [...]``
    naming which of ``modules`` it imported."""
    code = ("import sys\n"
            "from app.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            f"print('LOADED', sorted(m for m in {modules!r} if m in sys.modules))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                          env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"}).stdout
