"""The package's layering: no module imports from a layer above its own, and no import cycle.

Every ``import``/``from ... import`` in ``src/tiltedsam`` counts, also those inside functions (a lazy
import is still a dependency). Layers, bottom to top (docs/architecture.md): the math and small
utilities, the functional layer, the optimizers, then analysis/toy/harness, the framework
integrations, and the command line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "tiltedsam"

#: (module-name prefix, layer); the longest matching prefix decides
LAYERS = [
    ("tiltedsam.tilt", 0), ("tiltedsam._", 0),
    ("tiltedsam.functional", 1), ("tiltedsam.sharded", 1),
    ("tiltedsam.optim", 2),
    ("tiltedsam", 3),  # the package's own __init__ re-exports the optimizers and the math
    ("tiltedsam.analysis", 4), ("tiltedsam.toy", 4), ("tiltedsam.harness", 4), ("tiltedsam.quickstart", 4),
    ("tiltedsam.integrations", 5),
    ("tiltedsam.cli", 6), ("tiltedsam.__main__", 6),
]


def _layer(module: str) -> int:
    prefix = max((p for p, _ in LAYERS if module == p or module.startswith(p + ".")
                  or (p.endswith("._") and module.startswith(p))), key=len)
    return dict(LAYERS)[prefix]


def _modules() -> dict[str, Path]:
    found = {}
    for file in (SRC / PACKAGE).rglob("*.py"):
        parts = list(file.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = file
    return found


def _imports(module: str, file: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``module`` imports (``from pkg import name`` counts ``pkg.name`` when that
    is a module, else ``pkg``)."""
    is_package = file.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            names = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in known else origin for a in node.names]
        else:
            continue
        out.update(n for n in names if n == PACKAGE or n.startswith(PACKAGE + "."))
    out = {n if n in known else n.rsplit(".", 1)[0] for n in out}
    out.discard(module)
    return {n for n in out if n in known}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = _modules()
    return {module: _imports(module, file, known) for module, file in known.items()}


def test_the_layer_table_places_every_module(graph):
    assert "tiltedsam.optim.base" in graph and "tiltedsam.harness.train" in graph
    assert _layer("tiltedsam.tilt") < _layer("tiltedsam.functional") < _layer("tiltedsam.optim.tsam") \
        < _layer("tiltedsam.harness.train") < _layer("tiltedsam.integrations.hf") < _layer("tiltedsam.cli.train")
    assert _layer("tiltedsam._json") == 0 and _layer("tiltedsam.harness.engines.common") == 4


def test_no_module_imports_from_a_layer_above_it(graph):
    upward = sorted(f"{m} (layer {_layer(m)}) imports {n} (layer {_layer(n)})"
                    for m, targets in graph.items() for n in targets if _layer(n) > _layer(m))
    assert upward == []


def test_no_import_cycle(graph):
    """Depth-first search for a back edge; the first cycle found is named."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path + [node, target]
            if state.get(target) is None:
                found = visit(target, path + [node])
                if found:
                    return found
        state[node] = 2
        return None

    for module in sorted(graph):
        if state.get(module) is None:
            cycle = visit(module, [])
            assert cycle is None, " -> ".join(cycle[cycle.index(cycle[-1]):])
