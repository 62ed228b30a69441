"""diffii_core's packages import each other in one direction: no two of them (`methods/` and `denoising/`,
say) lean on each other, lazily or not. tests/test_import_cycles.py checks the same of single modules;
a package whose modules each avoid a circle can still form one with another package, and then neither
package can be read or moved alone.

Every import counts, module-level or inside a function (not those under `if TYPE_CHECKING:`), between
the top-level units of diffii_core: a subpackage (`diffii_core.methods`) or a module (`diffii_core.params`).
"""

from __future__ import annotations

from collections import defaultdict

from ..test_import_cycles import _cycles, _imports, _modules


def _unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _package_edges() -> dict[tuple[str, str], set[str]]:
    """(importing unit, imported unit) -> the modules of the first that make the edge."""
    modules = {name: path for name, path in _modules().items() if name.startswith("diffii_core")}
    edges: dict[tuple[str, str], set[str]] = defaultdict(set)
    for name, path in modules.items():
        for imported in _imports(path, modules):
            a, b = _unit(name), _unit(imported)
            # The package root only re-exports lazily (`diffii_core.X` names); it is no layer.
            if a != b and "diffii_core" not in (a, b):
                edges[(a, b)].add(name)
    return edges


def test_no_two_packages_of_diffii_core_import_each_other() -> None:
    edges = _package_edges()
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[b]  # every unit is a node, importing or not
        graph[a].add(b)
    named = []
    for component in _cycles(dict(graph)):
        path = _shortest_circle(graph, component)
        named.append("; ".join(f"{a} -> {b} (in {', '.join(sorted(edges[(a, b)]))})" for a, b in path))
    assert named == [], f"packages importing each other: {named}"


def _shortest_circle(graph: dict[str, set[str]], component: frozenset[str]) -> list[tuple[str, str]]:
    """The edges of a shortest circle through the component's first unit (breadth first)."""
    start = min(component)
    came: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    path = [(node, start)]
                    while node != start:
                        path.insert(0, (came[node], node))
                        node = came[node]
                    return path
                if target not in came:
                    came[target] = node
                    nxt.append(target)
        frontier = nxt
    raise AssertionError(f"{sorted(component)} is no circle")
