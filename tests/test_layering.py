"""The package's import graph: no cycles, layers import only downwards (DESIGN, Module layout).

Read from the source with `ast`, so every import counts: module-level, inside functions (a
deferred import still ties the two modules together) and under `TYPE_CHECKING`. Two graphs are
checked: modules (`pipeline.ops.copy`), and units, a unit being a subpackage or a top-level
module (`pipeline.ops`, `pipeline.refs`), as DESIGN's layers are named.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"

# Cycles tolerated, each the exact set of modules or units it runs through, with why. None are:
# an entry would need a reason, and a listed cycle that no longer exists fails
# `test_allowed_cycles_still_exist`.
ALLOWED_CYCLES: dict[frozenset[str], str] = {}

# Units that sit above the engine: nothing below them may import them.
UPPER = {"pipeline.cli", "pipeline.batch", "pipeline.ops", "pipeline.display", "pipeline.serve"}

# The bottom: what these may import, and nothing else of the package.
ONLY: dict[str, set[str]] = {
    "pipeline.errors": set(),
    "pipeline.readable": set(),
    "pipeline.refs": {"pipeline.errors"},
    "pipeline.oci": {"pipeline.errors", "pipeline.refs"},
    "pipeline.store": {"pipeline.errors", "pipeline.readable", "pipeline.transfer"},
}

# What each unit must not import, beyond UPPER (DESIGN: store and io at the bottom, the
# image model and transports over them, the engine over those, batch and cli on top).
FORBIDDEN: dict[str, set[str]] = {
    "pipeline.transfer": {
        "pipeline.store",
        "pipeline.archive",
        "pipeline.registry",
        "pipeline.transports",
    },
    "pipeline.registry": {"pipeline.archive", "pipeline.transports"},
    "pipeline.archive": {"pipeline.registry"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """The package's modules `path` imports, wherever in the file the import is."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            for alias in node.names:  # `from pipeline.transfer import cancel` is a module
                sub = f"{name}.{alias.name}"
                out.add(sub if sub in known else name)
    return {m for m in out if m in known and m != module}


def module_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {m: imports_of(p, m, known) for m, p in files.items()}


def unit_graph(modules: Mapping[str, set[str]]) -> dict[str, set[str]]:
    units: dict[str, set[str]] = {}
    for module, targets in modules.items():
        edges = units.setdefault(unit_of(module), set())
        edges.update(unit_of(t) for t in targets if unit_of(t) != unit_of(module))
    return units


def components(graph: Mapping[str, Iterable[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one node: each holds a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; recursion depth is the module count
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def cycle_path(graph: Mapping[str, Iterable[str]], component: frozenset[str]) -> list[str]:
    """A shortest cycle from the component's first node back to it, for the failure message."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w in component and w not in parents:
                    parents[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


MODULES = module_graph()
UNITS = unit_graph(MODULES)


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """A guard on the parser: imports in functions, under TYPE_CHECKING, relative ones."""
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from pipeline.transfer import cancel\n"
        "from . import keys\n"
        "if TYPE_CHECKING:\n"
        "    from pipeline.oci import Descriptor\n"
        "def f():\n"
        "    import pipeline.refs\n"
        "    from ..batch.spec import Spec\n"
    )
    found = imports_of(source, "pipeline.store.mod", set(MODULES))
    assert found == {
        "pipeline.transfer.cancel",
        "pipeline.store.keys",
        "pipeline.oci",
        "pipeline.refs",
        "pipeline.batch.spec",
    }


@pytest.mark.parametrize("level", ["modules", "units"])
def test_no_import_cycles(level: str) -> None:
    graph = MODULES if level == "modules" else UNITS
    found = [c for c in components(graph) if c not in ALLOWED_CYCLES]
    assert not found, "import cycles:\n" + "\n".join(
        " -> ".join(cycle_path(graph, c)) + f"   (all of: {', '.join(sorted(c))})" for c in found
    )


def test_allowed_cycles_still_exist() -> None:
    """An entry of ALLOWED_CYCLES whose cycle is gone must be deleted, not kept as a pass."""
    present = set(components(MODULES)) | set(components(UNITS))
    stale = [ALLOWED_CYCLES[c] for c in ALLOWED_CYCLES if c not in present]
    assert not stale, f"cycles removed, delete their ALLOWED_CYCLES entries: {stale}"


def test_layers_import_only_downwards() -> None:
    wrong = []
    for unit, targets in sorted(UNITS.items()):
        forbidden = set(FORBIDDEN.get(unit, set()))
        if unit in ONLY:
            forbidden |= set(UNITS) - ONLY[unit]
        if unit == "pipeline.__main__":
            continue  # `python -m pipeline`: the command line itself
        if unit not in UPPER:
            forbidden |= UPPER
        forbidden.add("pipeline.cli")
        for target in sorted(targets & forbidden - {unit}):
            via = sorted(m for m in MODULES if unit_of(m) == unit and _imports_unit(m, target))
            wrong.append(f"{unit} imports {target} (in {', '.join(via)})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def _imports_unit(module: str, unit: str) -> bool:
    return any(unit_of(t) == unit for t in MODULES[module])
