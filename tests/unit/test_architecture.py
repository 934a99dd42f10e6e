"""docs/architecture.md's import rules, checked on the source without importing it.

The graph is built with ``ast`` from every module under ``service/t2i_router``. Which imports
count:

- For the cycle check, only imports that run when the module is imported: module level,
  including inside ``try``/``if`` blocks, but not under ``if TYPE_CHECKING:`` and not inside
  functions or methods. A lazy import inside a function runs after every module involved has
  finished importing, so it cannot fail the way a cycle at import time does; it is the
  documented way out of one. Importing ``a.b.c`` also runs the ``__init__`` of ``a.b`` (unless
  the importer is inside ``a.b`` already, where that package is being imported anyway).
  (The lazy cycle this rule lets through, engines/serving.py building engines/bls.py's encoder
  inside a function, is caught by the layer rules instead: the BLS code is triton's now.)
- For the layer rules (which room may import which) and for grpc/tritonclient in the core,
  every import counts, lazy ones too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "t2i_router"
ROOT = Path(__file__).resolve().parents[2] / "service" / PACKAGE

# Rooms that a room must not import (docs/architecture.md, "Rooms").
FORBIDDEN = {
    "world": ("engines", "triton", "estimator", "router"),
    "engines": ("triton", "estimator", "router"),
}
# The pure core: neither grpc, tritonclient nor redis, at module level or inside functions.
CORE = (
    "world",
    "estimator.evaluation",
    "estimator.labels",
    "estimator.choices",
    "estimator.moe",
    "estimator.training",
    "estimator.quality",
    "estimator.features",
    "router.policy",
    "router.budget",
    "router.calibration",
    "router.budget_store",
    "router.batching",
    "router.simulate",
)
EDGE_LIBRARIES = ("grpc", "tritonclient", "redis")


@dataclass(frozen=True)
class Import:
    target: str  # a dotted module name (for ``from m import n``: m, and m.n when a module)
    line: int
    at_import_time: bool  # False inside a function or under ``if TYPE_CHECKING:``


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package by dotted name (the Triton model templates excluded: they
    are not part of the package, Triton loads them as files)."""
    return {
        module_name(p, root): p
        for p in sorted(root.rglob("*.py"))
        if "templates" not in p.relative_to(root).parts
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str, name: str, is_package: bool, modules: set[str]) -> list[Import]:
    """The imports of one module's source, resolved to dotted names."""
    found: list[Import] = []

    def resolve(module: str | None, level: int) -> str:
        if not level:
            return module or ""
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - (level - 1)]
        return ".".join([*base, module] if module else base)

    def visit(node: ast.AST, at_import_time: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(alias.name, node.lineno, at_import_time))
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node.module, node.level)
            found.append(Import(base, node.lineno, at_import_time))
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    found.append(Import(f"{base}.{alias.name}", node.lineno, at_import_time))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            for child in ast.iter_child_nodes(node):
                visit(child, False)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, at_import_time)
        else:
            for child in ast.iter_child_nodes(node):
                visit(child, at_import_time)

    visit(ast.parse(source), True)
    return found


def import_graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[str, list[Import]]]:
    """(edges that run at import time, between the package's modules; every import by module)."""
    paths = package_modules(root)
    modules = set(paths)
    every = {
        name: imports_of(path.read_text(), name, path.name == "__init__.py", modules)
        for name, path in paths.items()
    }
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, found in every.items():
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for imp in found:
            if not imp.at_import_time:
                continue
            parts = imp.target.split(".")
            for i in range(1, len(parts) + 1):  # the module and the packages it runs
                target = ".".join(parts[:i])
                if target in modules and target != name and target not in own_packages:
                    graph[name].add(target)
    return graph, every


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan), each
    as a path ``[a, b, ..., a]``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_a_cycle_in(graph, set(c)) for c in components]


def _a_cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first, so the cycle named is a shortest one through start
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def _in(module: str, room: str) -> bool:
    full = f"{PACKAGE}.{room}"
    return module == full or module.startswith(full + ".")


def violations(every: dict[str, list[Import]]) -> Iterator[str]:
    for name, found in sorted(every.items()):
        for room, forbidden in FORBIDDEN.items():
            if not _in(name, room):
                continue
            for imp in found:
                for other in forbidden:
                    if _in(imp.target, other):
                        rule = f"{room} may not import {other}"
                        yield f"{name}:{imp.line} imports {imp.target} ({rule})"
        if any(_in(name, core) for core in CORE):
            for imp in found:
                top = imp.target.split(".")[0]
                if top in EDGE_LIBRARIES:
                    yield f"{name}:{imp.line} imports {imp.target} (the core imports no {top})"


GRAPH, EVERY = import_graph()


def test_the_graph_sees_the_package_and_its_imports() -> None:
    """Guards the checks below against passing on an empty or unresolved graph."""
    assert len(GRAPH) > 40
    assert "t2i_router.engines.serving" in GRAPH["t2i_router.triton.backend"]
    assert "t2i_router.engines.engine" in GRAPH["t2i_router.engines"]  # from a package __init__
    lazy = [i for i in EVERY["t2i_router.triton.cli"] if not i.at_import_time]
    assert any(i.target == "t2i_router.engines.serving" for i in lazy)


def test_no_import_cycle_between_the_packages_modules() -> None:
    cycles = find_cycles(GRAPH)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_every_room_imports_only_what_the_architecture_allows() -> None:
    found = list(violations(EVERY))
    assert found == [], "\n".join(found)


def test_the_checks_name_a_cycle_and_a_forbidden_import(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    for rel, text in {
        "__init__.py": "",
        "world/__init__.py": "",
        "world/a.py": "from t2i_router.engines import b\n",
        "world/c.py": "def f():\n    import grpc\n",
        "engines/__init__.py": "",
        "engines/b.py": "from ..world import a\n",
        "engines/d.py": "def f():\n    from t2i_router.engines import b\n",
        "engines/e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from t2i_router.engines import d\n",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    graph, every = import_graph(pkg)
    assert find_cycles(graph) == [
        ["t2i_router.engines.b", "t2i_router.world.a", "t2i_router.engines.b"]
    ]
    found = list(violations(every))
    assert any("world.a:1 imports t2i_router.engines" in v for v in found), found
    assert any("world.c:2 imports grpc" in v for v in found), found
    assert graph["t2i_router.engines.d"] == set()  # lazy: not an import-time edge
    assert graph["t2i_router.engines.e"] == set()  # TYPE_CHECKING: never runs


@pytest.mark.parametrize("core", CORE)
def test_each_core_module_exists(core: str) -> None:
    """A renamed core module would silently leave the rule above; fail instead."""
    assert any(_in(name, core) for name in GRAPH), core


MAX_LINES = 400
REASON = "# Over 400 lines on purpose:"


def test_a_module_over_400_lines_says_why_at_its_top() -> None:
    """Split a long module by concern, or give the one-line reason as its first line."""
    long = {
        name: n
        for name, path in package_modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
        and not path.read_text().startswith(REASON)
    }
    assert long == {}, f"over {MAX_LINES} lines without a reason at the top: {long}"


def test_test_files_have_unique_basenames() -> None:
    """pytest imports test files by basename (rootdir-relative, no __init__.py): two files named
    alike in tests/ and benchmarks/ stop collection with an import-file-mismatch error."""
    root = Path(__file__).resolve().parents[2]
    names = [p.name for d in ("tests", "benchmarks") for p in (root / d).rglob("test_*.py")]
    repeated = sorted({n for n in names if names.count(n) > 1})
    assert repeated == [], f"test files share a basename: {repeated}"
