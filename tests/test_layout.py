"""The architecture's rules, checked over the package's own imports (DESIGN.md §3).

* ``capture/`` runs in production: it imports only the standard library, cloudpickle and
  ``snapshot/``; never pytest, numpy, scipy, pytest-benchmark, a profiler or the replay side.
* No module imports back from ``plugin``.
* No import circle between modules, counting imports inside functions too (a lazy import
  hides a circle; it doesn't remove one). Imports under ``if TYPE_CHECKING:`` don't count.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pytest_perfreplay

PACKAGE = "pytest_perfreplay"
ROOT = Path(pytest_perfreplay.__file__).resolve().parent

HEAVY = {"pytest", "_pytest", "numpy", "scipy", "pytest_benchmark", "pyinstrument", "py_spy"}
CAPTURE_MAY_USE = {f"{PACKAGE}.capture", f"{PACKAGE}.snapshot", f"{PACKAGE}.errors"}


def module_name(path: Path, root: Path = ROOT, package: str = PACKAGE) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(
    path: Path, modules: set[str], root: Path = ROOT, package: str = PACKAGE
) -> set[str]:
    """Every module ``path`` imports, as absolute names; ``from X import y`` counts
    ``X.y`` when that is a module of the package, else ``X``."""
    name = module_name(path, root, package)
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            for alias in node.names:
                sub = f"{origin}.{alias.name}"
                found.add(sub if sub in modules else origin)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(p, root, package): p for p in root.rglob("*.py")}
    modules = set(paths)
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets = set()
        for imported in imports_of(path, modules, root, package):
            # importing a.b.c runs a/__init__ and a/b/__init__ too
            parts = imported.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in modules and prefix != name:
                    targets.add(prefix)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as a list of modules that starts and ends with the same one."""
    # A package's __init__ running its own submodules is not a circle: a submodule
    # importing its parent package is what we look for, so parent->child edges stay in.
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := dfs(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)) is not None:
            return found
    return None


def _without_package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    # `import a.b` from inside `a` runs `a/__init__`, which is already running or done:
    # that implicit parent edge is not a circle the code wrote. An explicit import of the
    # parent package (``from .. import x``) is kept, because it is one.
    return {
        name: {t for t in targets if not name.startswith(t + ".")}
        for name, targets in graph.items()
    }


def capture_violations(graph: dict[str, set[str]], root: Path = ROOT) -> list[str]:
    bad = []
    for name, path in sorted((module_name(p, root), p) for p in (root / "capture").rglob("*.py")):
        for imported in sorted(imports_of(path, set(graph), root)):
            top = imported.split(".")[0]
            if (
                top in HEAVY
                or top == PACKAGE
                and not any(
                    imported == ok or imported.startswith(ok + ".") for ok in CAPTURE_MAY_USE
                )
            ):
                bad.append(f"{name} imports {imported}")
    return bad


def test_no_import_circle() -> None:
    cycle = find_cycle(_without_package_edges(import_graph()))
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_capture_side_imports_nothing_heavy() -> None:
    assert capture_violations(import_graph()) == []


def test_nothing_imports_plugin() -> None:
    graph = import_graph()
    importers = sorted(n for n, targets in graph.items() if f"{PACKAGE}.plugin" in targets)
    assert importers == []


def test_capture_import_loads_no_heavy_module_at_run_time() -> None:
    # The static rule above, confirmed in a fresh interpreter.
    code = textwrap.dedent(
        f"""
        import sys
        import pytest_perfreplay
        from pytest_perfreplay import capture, configure
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {sorted(HEAVY)!r})
        replay = sorted(m for m in sys.modules if m.startswith(("pytest_perfreplay.replay",
                        "pytest_perfreplay.profile", "pytest_perfreplay.plugin")))
        print(heavy, replay)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"


# -- the checker catches what it is for -------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_checker_finds_a_circle_hidden_in_a_function(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "plugin.py": "from .replay.items import x\n",
            "replay/__init__.py": "",
            "replay/items.py": "def f():\n    from ..plugin import state\n",
        },
    )
    cycle = find_cycle(_without_package_edges(import_graph(root)))
    assert cycle is not None
    assert f"{PACKAGE}.plugin" in cycle and f"{PACKAGE}.replay.items" in cycle


def test_checker_ignores_type_checking_imports(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from .b import y\n",
            "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n",
        },
    )
    assert find_cycle(_without_package_edges(import_graph(root))) is None


@pytest.mark.parametrize(
    ("line", "culprit"),
    [
        ("import numpy as np\n", "numpy"),
        ("def f():\n    import scipy.stats\n", "scipy.stats"),
        ("from pytest import fixture\n", "pytest"),
        ("from ..replay import stats\n", f"{PACKAGE}.replay.stats"),
    ],
)
def test_checker_flags_heavy_capture_imports(tmp_path: Path, line: str, culprit: str) -> None:
    files = {
        "__init__.py": "",
        "capture/__init__.py": "",
        "capture/decorator.py": "from ..snapshot import format\n" + line,
        "snapshot/__init__.py": "",
        "snapshot/format.py": "",
        "replay/__init__.py": "",
        "replay/stats.py": "",
    }
    root = _tree(tmp_path, files)
    graph = import_graph(root)
    found = capture_violations(graph, root)
    assert found == [f"{PACKAGE}.capture.decorator imports {culprit}"]
