"""The house's floors hold: no import cycle between packages, nor between modules of one."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grimp

PACKAGES = ("casign", "core", "store", "ocsp", "est", "keystore", "worker", "producers")


def _import_graph() -> dict[str, set[str]]:
    graph = grimp.build_graph(*PACKAGES)
    return {
        module: {
            imported
            for imported in graph.find_modules_directly_imported_by(module)
            if imported.split(".")[0] in PACKAGES
        }
        for module in graph.modules
    }


def _cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each a cycle's members."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _package(module: str) -> str:
    return module.split(".", maxsplit=1)[0]


def test_no_cycle_between_packages() -> None:
    by_package: dict[str, set[str]] = {}
    for module, imported in _import_graph().items():
        by_package.setdefault(_package(module), set()).update(
            _package(target) for target in imported if _package(target) != _package(module)
        )
    assert _cycles(by_package) == []


def test_no_cycle_between_modules_of_a_package() -> None:
    graph = _import_graph()
    within = {
        module: {target for target in imported if _package(target) == _package(module)}
        for module, imported in graph.items()
    }
    # A package's __init__ re-exports its modules; that is not a cycle of ideas.
    for module, targets in within.items():
        targets.discard(_package(module))
    assert _cycles(within) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
