"""The house's layering: no import cycles between the project's modules, and the engine-free core stays so.

The graph is read statically (ast) from every module of `fedgan`, `server`, `clients` and `scenarios`: imports at
module level and inside functions both count (a function-level import only defers a cycle). Imports under
``if TYPE_CHECKING:`` never run and are left out. Importing ``a.b.c`` also runs ``a`` and ``a.b`` (their
``__init__``), so those edges count too.
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedgan", "server", "clients", "scenarios")


def project_modules() -> dict[str, Path]:
    """Every module of the project's packages: dotted name -> file."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def _is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Dotted names a module imports (absolute and relative), skipping TYPE_CHECKING blocks."""
    names: set[str] = set()
    pending = [tree]
    while pending:
        node = pending.pop()
        for child in ast.iter_child_nodes(node):
            if _is_type_checking_block(child):
                pending.extend(child.orelse)  # the else branch does run
                continue
            if isinstance(child, ast.Import):
                names |= {alias.name for alias in child.names}
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                names.add(base)
                names |= {f"{base}.{alias.name}" for alias in child.names}
            pending.append(child)
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> project modules it runs on import (parent packages included)."""
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges: set[str] = set()
        for target in _imported_names(tree, name, path.name == "__init__.py"):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # a.b.c runs a, a.b and a.b.c
                prefix = ".".join(parts[:i])
                if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                    edges.add(prefix)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_project_has_no_import_cycle():
    # Prepare / Execute
    found = cycles(import_graph())

    # Assert
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_sees_a_cycle_through_a_function_level_import(tmp_path):
    # The detector itself: a -> b at module level, b -> a inside a function.
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from a import x\n")
    graph = {}
    for name in ("a", "b"):
        tree = ast.parse((tmp_path / f"{name}.py").read_text())
        graph[name] = {n.split(".")[0] for n in _imported_names(tree, name, False)} & {"a", "b"}
    assert cycles(graph) == [["a", "b"]]


def test_the_engine_free_core_never_imports_flower_ray_or_the_apps():
    forbidden = ("flwr", "ray", "server", "clients")
    for name, path in project_modules().items():
        if not name.startswith("fedgan"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bad = sorted(n for n in _imported_names(tree, name, path.name == "__init__.py")
                     if n.split(".")[0] in forbidden)
        assert not bad, f"{name} imports {bad}"


def test_the_apps_import_only_from_the_core_never_from_each_other():
    for name, path in project_modules().items():
        top = name.split(".")[0]
        if top not in ("server", "clients"):
            continue
        other = {"server": "clients", "clients": "server"}[top]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = _imported_names(tree, name, path.name == "__init__.py")
        assert not any(n.split(".")[0] in (other, "scenarios") for n in names), name


@pytest.mark.parametrize("module", sorted(
    m.name for package in PACKAGES for m in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}.")))
def test_every_module_imports(module):
    importlib.import_module(module)
