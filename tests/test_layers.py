"""The bundle's package dependencies point one way: no import cycle, no import from a lower layer into a higher one,
and no import hidden inside a function (except the documented deferred third-party packages).

Read from the source with ``ast``, so an import that only runs on some path counts as well."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BUNDLE_ROOT
from scripts import DEFERRED_IMPORTS, LAYERS

PACKAGE = "scripts"
SOURCES = BUNDLE_ROOT / PACKAGE


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(BUNDLE_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SOURCES.rglob("*.py"))}


def _imports(module: str, path: Path) -> Iterator[tuple[ast.AST, str, list[str]]]:
    """``(node, imported module, imported names)`` of every import statement, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node, target, [alias.name for alias in node.names]


def _in_function(tree: ast.AST) -> set[ast.AST]:
    """Import nodes inside a function or class body."""
    inside: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            inside |= {n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return inside


def _graph() -> dict[str, set[str]]:
    """``{module: bundle modules it imports}``; ``from . import files`` counts as importing ``scripts.files``."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for _, target, names in _imports(module, path):
            if target != PACKAGE and not target.startswith(PACKAGE + "."):
                continue
            found = {f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES} or {target}
            graph[module] |= {m for m in found if m in MODULES and m != module}
    return graph


def _layer(module: str) -> int:
    """Index in ``LAYERS`` of a module (``scripts.inference.dicom`` -> the layer holding ``inference``)."""
    if module == PACKAGE:
        return 0
    top = module.split(".")[1]
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"{module} is in no layer of scripts.LAYERS; add it there and to the package docstring.")


def test_every_module_is_in_a_layer() -> None:
    listed = {name for layer in LAYERS for name in layer}
    present = {m.split(".")[1] for m in MODULES if m != PACKAGE}
    assert present <= listed, f"not in scripts.LAYERS: {sorted(present - listed)}"
    assert listed <= present, f"scripts.LAYERS names what does not exist: {sorted(listed - present)}"


def test_no_import_from_a_higher_layer() -> None:
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in _graph().items()
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_function_level_import(module: str) -> None:
    """Imports sit at the top of the module; only :data:`scripts.DEFERRED_IMPORTS` may be imported where used."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    inside = _in_function(tree)
    hidden = [
        f"{path.relative_to(BUNDLE_ROOT)}:{node.lineno} imports {target or '.'} inside a function"
        for node, target, _ in _imports(module, path)
        if node in inside and target.split(".")[0] not in DEFERRED_IMPORTS
    ]
    assert not hidden, "\n".join(hidden)


def test_the_checks_see_what_they_check() -> None:
    """The graph holds known edges, and a synthetic cycle and a hidden import would be found."""
    graph = _graph()
    assert "scripts.inference.inputs" in graph["scripts.inference.function_report"]
    assert "scripts.files" in graph["scripts.data.nifti"]  # from .. import files
    evaluation, engine, inference = (
        _layer(f"scripts.{m}") for m in ("evaluation.report", "engine.evaluator", "inference.inferer")
    )
    assert evaluation > engine > inference
    code = "import os\n\ndef f():\n    from .files import atomic_path\n    import matplotlib\n"
    tree = ast.parse(code)
    inside = _in_function(tree)
    assert [type(n).__name__ for n in ast.walk(tree) if n in inside] == ["ImportFrom", "Import"]
