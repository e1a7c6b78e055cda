"""The package's layers as its imports show them: no runtime import cycle anywhere, and every
layer imports only downward (model → common → config / observe → proxy; the supervisor and
the CLI wire them). Read from the source (ast), so a cycle fails here before it fails at an
unlucky import order; the HTTP path's modules are also imported each in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "pysidecar"

# layer → the layers of ours it must not import at run time.
FORBIDDEN = {
    "model": {"common", "config", "observe", "proxy", "interception", "inject", "lab", "demo"},
    "common": {"config", "observe", "proxy", "interception", "inject", "lab", "demo"},
    "config": {"observe", "proxy", "lab", "demo"},
    "observe": {"config", "proxy", "lab", "demo"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Module-level imports that run: not under `if TYPE_CHECKING:`, not inside functions."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for n in body:
            if isinstance(n, ast.Import | ast.ImportFrom):
                found.append(n)
            elif isinstance(n, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(n.test):
                    visit(n.body)
                visit(n.orelse)
            elif isinstance(n, ast.Try):
                visit(n.body)
                for h in n.handlers:
                    visit(h.body)
                visit(n.orelse)
                visit(n.finalbody)

    visit(tree.body)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        package = m if path.name == "__init__.py" else m.rpartition(".")[0]
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                names = [base, *(f"{base}.{a.name}" for a in node.names)]
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                # A parent package is initialised before its modules: no cycle through it.
                if name and name != m and not m.startswith(name + "."):
                    graph[m].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_runtime_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_import_downward() -> None:
    wrong = []
    for m, targets in import_graph().items():
        layer = m.split(".")[1] if "." in m else ""
        for t in targets:
            if "." in t and t.split(".")[1] in FORBIDDEN.get(layer, ()):
                wrong.append(f"{m} -> {t}")
    assert wrong == []


HTTP_PATH = sorted(m for m in _modules() if m.startswith(("pysidecar.proxy.http", "pysidecar.common")))


@pytest.mark.parametrize("module", HTTP_PATH)
def test_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr[-2000:]


def test_proxy_files_stay_under_500_lines() -> None:
    """The house rule (one job per file): a file of pysidecar/proxy past 500 lines is split."""
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "proxy").rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}
