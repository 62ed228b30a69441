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

# Edges that close a circle today, each with the module that makes it and why it stays for now. The test
# fails when one disappears, so the list only shrinks.
KNOWN: dict[tuple[str, str], str] = {
    # models/loader.py makes networks batch-invariant, reads the model's schedule and builds the world
    # model: the loader belongs to the model-registry work, so its imports move with it.
    ("diffii_core.models", "diffii_core.denoising"): "models/loader.py: denoising.batch_invariance",
    ("diffii_core.models", "diffii_core.inversion"): "models/loader.py: inversion.ddim.Schedule",
    ("diffii_core.models", "diffii_core.world"): "models/loader.py: world.shipped_model",
    # inversion/ddim.py holds the noise schedule that training and the samplers share; moving it below
    # both packages changes the loader's import too.
    ("diffii_core.denoising", "diffii_core.inversion"): "denoising/sampling.py: inversion.ddim",
    ("diffii_core.learning", "diffii_core.inversion"): "learning/training.py: inversion.ddim.Schedule",
    # output/archive.py imports JobParams for an annotation only (under TYPE_CHECKING it would not
    # count); the file moves with the archive-assembly work.
    ("diffii_core.output", "diffii_core.params"): "output/archive.py: params.JobParams",
}


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
        if (a, b) not in KNOWN:
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


def test_every_known_circle_still_exists() -> None:
    edges = _package_edges()
    gone = [f"{a} -> {b}" for a, b in KNOWN if (a, b) not in edges]
    assert gone == [], f"no longer imported, drop from KNOWN: {gone}"


def test_the_layer_check_names_a_circle_between_packages() -> None:
    # The shape that methods/ and denoising/ had: two modules in different packages, each a leaf.
    graph = {"pkg.methods": {"pkg.denoising"}, "pkg.denoising": {"pkg.methods"}, "pkg.params": set()}
    assert _cycles(graph) == [frozenset({"pkg.methods", "pkg.denoising"})]
