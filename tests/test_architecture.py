"""The package's shape holds: one-way layers (import-linter contract), no import cycle between lcp modules
(function-local imports counted), no function-local import of lcp, small modules, a light ``import lcp``."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lcp"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _skipped_blocks(tree: ast.Module) -> set[int]:
    """Line numbers inside ``if TYPE_CHECKING:`` (never run) and ``if __name__ == "__main__":`` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = ast.unparse(node.test)
            if test in ("TYPE_CHECKING", "typing.TYPE_CHECKING") or "__name__" in test:
                lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported lcp module, line, inside a function) for every import of ``path`` that runs."""
    tree = ast.parse(path.read_text())
    skip = _skipped_blocks(tree)
    local: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local.update(range(fn.lineno, (fn.end_lineno or fn.lineno) + 1))
    out = []
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    for node in ast.walk(tree):
        if node.lineno in skip if hasattr(node, "lineno") else False:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for a in node.names:  # ``from lcp.x import y``: y is a module or a name of lcp.x
                names.append(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
        for name in names:
            if name == "lcp" or name.startswith("lcp."):
                out.append((name, node.lineno, node.lineno in local))
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: {n for n, _, _ in _imports(p, modules) if n in modules and n != m} for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_lcp_modules() -> None:
    graph = _graph()
    assert len(graph) > 50 and sum(map(len, graph.values())) > 150  # the parser sees the package
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    """The check above can fail: a graph with a two-module cycle is reported."""
    graph = _graph()
    graph["lcp.errors"] = {"lcp.cli"}  # cli imports errors (through others): now errors imports cli
    assert any("lcp.errors" in c and "lcp.cli" in c for c in _cycles(graph))


def test_no_function_local_import_of_lcp() -> None:
    """lcp imports itself at module level only (local imports hide cycles); TYPE_CHECKING and __main__ blocks
    are exempt."""
    modules = _modules()
    local = [
        f"{p.relative_to(ROOT)}:{line} imports {name}"
        for m, p in modules.items()
        for name, line, inside in _imports(p, modules)
        if inside
    ]
    assert local == []


def test_modules_are_small() -> None:
    big = {
        str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert big == {}


def test_import_lcp_is_light() -> None:
    """``import lcp.cli`` loads neither dask, matplotlib, nevergrad, onnx, timm nor torchvision (they load when a
    feature or a model needs them; timm and torchvision add seconds to every start of the command line)."""
    code = (
        "import sys, lcp.cli; heavy = ('dask', 'matplotlib', 'nevergrad', 'onnx', 'timm', 'torchvision'); "
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    return subprocess.run(
        [str(exe), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": str(exe.parent)},
    )


def test_layer_contract_holds_and_fails_when_broken(tmp_path: Path) -> None:
    """The import-linter layer contract of pyproject.toml passes on the package and fails on a copy in which the
    engine imports the command line."""
    ok = _lint_imports(ROOT)
    assert ok.returncode == 0, ok.stdout[-2000:]
    shutil.copytree(PACKAGE, tmp_path / "lcp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    cost = tmp_path / "lcp" / "engine" / "cost.py"
    cost.write_text(cost.read_text() + "\nimport lcp.cli  # a layer violation\n")
    broken = _lint_imports(tmp_path)
    assert broken.returncode != 0
    assert "lcp.engine is not allowed to import lcp.cli" in broken.stdout
