"""fabric's modules import one another without circles and without private names.

A circle (even one closed only under ``TYPE_CHECKING``) means two modules know
each other's insides; a private name imported from another module is a
collaborator reached behind its interface.  Both are read from the source with
``ast``, so nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fabric

ROOT = Path(fabric.__file__).parent


def module_name(path: Path) -> str:
    parts = ["fabric", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in ROOT.rglob("*.py")}


def imports(name: str) -> list[tuple[str, str | None]]:
    """(module imported, name taken from it or None) for every import statement of
    module ``name``, at any depth (under ``if TYPE_CHECKING:`` and in functions too)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            source = ".".join([*base, *filter(None, [node.module])])
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.append((submodule, None) if submodule in MODULES else (source, alias.name))
    return found


def graph() -> dict[str, set[str]]:
    return {name: {target for target, _ in imports(name) if target in MODULES} for name in MODULES}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in edges[node]:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_the_walker_sees_relative_typing_only_and_submodule_imports():
    edges = graph()
    assert "fabric.client.ventilator" in edges["fabric.client.io_loop"]  # from .ventilator import Ventilator
    assert "fabric.wire.codec" in edges["fabric.client.futures"]  # from ..wire import codec
    assert "fabric.client.executor" in edges["fabric"]  # under TYPE_CHECKING
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_between_fabric_modules():
    assert cycles(graph()) == []


def test_no_module_imports_a_private_name_of_another():
    private = [
        f"{name} imports {source}.{taken}"
        for name in MODULES
        for source, taken in imports(name)
        if source.startswith("fabric") and taken and taken.startswith("_") and not taken.startswith("__")
    ]
    assert private == []
