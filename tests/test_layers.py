"""Dependencies point one way: the folders of ``iterrefine/`` are layers, bottom to top.

Every import counts — top-level, function-local (lazy) and ``TYPE_CHECKING`` alike — so
a back-arrow cannot hide in a function body. A module may import its own package and
the layers below it; packages that share a layer are peers and never import each other.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]

#: The layer diagram of docs/ARCHITECTURE.md, bottom first. A set is one layer of peers.
LAYERS: tuple[frozenset[str], ...] = tuple(frozenset(layer) for layer in (
    {"iterrefine.errors"},        # the base: one error root, then the generic helpers
    {"iterrefine.lifecycle", "iterrefine.retry", "iterrefine.processes"},
    {"iterrefine.item"},          # what flows: the item, ids, untrusted-JSON guards (no I/O)
    {"iterrefine.config"},        # configuration as a value, presets
    {"iterrefine.observe"},       # metrics, logging, the metrics HTTP server
    {"iterrefine.kafka", "iterrefine.broker"},  # clients and topics; the embedded broker
    {"iterrefine.runtime"},       # the stage runner
    {"iterrefine.llm"},           # transport: one client per role, cache, circuit, limits
    {"iterrefine.tasks"},         # the LLM vocabulary: registry, prompts, parsers, ask
    {"iterrefine.sim", "iterrefine.selection", "iterrefine.io"},
    {"iterrefine.graph"},         # the stage API users write against
    {"iterrefine.consumers"},     # the paper's stages, on the stage API
    {"iterrefine.app", "iterrefine.tools"},  # composition root and run; read-side tools
    {"iterrefine.testing"},       # the test kit for users' stages
    {"iterrefine.cli"},           # the command line
    {"iterrefine"},               # the public facade (lazy re-exports)
))


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "consumers":
        parts.insert(0, "iterrefine")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> Iterator[tuple[str, Path]]:
    for folder in ("iterrefine", "consumers"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if folder == "iterrefine" and "consumers" in path.relative_to(ROOT).parts:
                continue  # the symlink to consumers/, read from there
            yield _module_name(path), path


MODULES: dict[str, Path] = dict(_sources())


def _resolve(name: str) -> str | None:
    """The module (of ours) that ``name`` — a module or a name inside one — refers to."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    """Every module of ours that ``module`` imports, wherever the import statement sits."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            if name.startswith("iterrefine"):
                target = _resolve(name)
                if target is not None and target != module:
                    found.add(target)
    return found


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the layer package ``module`` belongs to)."""
    best: tuple[int, str] | None = None
    for index, layer in enumerate(LAYERS):
        for package in layer:
            if (module == package or module.startswith(package + ".")) and (
                    best is None or len(package) > len(best[1])):
                best = (index, package)
    assert best is not None, f"{module} is in no layer: add its package to LAYERS"
    return best


def test_every_module_has_a_layer() -> None:
    """No module sits outside the diagram (a new top-level module must be placed)."""
    for module in MODULES:
        layer_of(module)


def test_imports_point_down_the_layers() -> None:
    """A module imports only its own package and lower layers, never a peer or a layer above."""
    wrong: list[str] = []
    for module in MODULES:
        index, package = layer_of(module)
        for target in imports_of(module):
            their_index, their_package = layer_of(target)
            if their_package == package or their_index < index:
                continue
            wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def _cycles() -> list[list[str]]:
    graph = {module: sorted(imports_of(module)) for module in MODULES}
    seen: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        seen.add(node)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt in on_stack:
                found.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in seen:
                visit(nxt)
        stack.pop()
        on_stack.discard(node)

    for module in sorted(graph):
        if module not in seen:
            visit(module)
    return found


def test_no_import_circles() -> None:
    """No module reaches itself through imports, lazy ones included (a package's
    ``__init__`` re-exporting its own modules does not count as a circle)."""
    def is_reexport(cycle: list[str]) -> bool:
        return any(MODULES[a].name == "__init__.py" and b.startswith(a + ".")
                   for a, b in itertools.pairwise(cycle))

    circles = [" -> ".join(c) for c in _cycles() if not is_reexport(c)]
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_private_modules_stay_in_their_package() -> None:
    """A ``_private`` module is imported only from inside the package that holds it."""
    wrong: list[str] = []
    for module in MODULES:
        for target in imports_of(module):
            parts = target.split(".")
            private = [i for i, part in enumerate(parts) if part.startswith("_")]
            if private:
                owner = ".".join(parts[: private[0]])
                if not (module == owner or module.startswith(owner + ".")):
                    wrong.append(f"{module} -> {target}")
    assert not wrong, "private modules imported from outside:\n" + "\n".join(sorted(wrong))


def test_a_stage_never_imports_a_sibling_stage() -> None:
    """Stages share decisions through small helper modules, never through each other."""
    stages = {"score", "route", "refine", "review", "align"}
    for stage in stages:
        siblings = {f"iterrefine.consumers.{s}" for s in stages - {stage}}
        assert not imports_of(f"iterrefine.consumers.{stage}") & siblings, stage


def test_the_layer_test_sees_lazy_and_type_checking_imports() -> None:
    """The checker itself: an import inside a function or TYPE_CHECKING block is found."""
    assert "iterrefine.app.pipeline" in imports_of("iterrefine")  # TYPE_CHECKING only
    lazy = [m for m in MODULES if any(
        isinstance(node, ast.FunctionDef) and any(
            isinstance(inner, ast.ImportFrom) for inner in ast.walk(node))
        for node in ast.walk(ast.parse(MODULES[m].read_text())))]
    assert lazy, "expected at least one function-local import to check"


#: A room a newcomer reads in one sitting: the limits the layer move set.
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80


def test_no_room_too_big_to_read() -> None:
    """No module over 450 lines and no function over 80 (benchmarks/structure.py counts
    the same way): a feature that grows a room past them splits it by responsibility."""
    too_big: list[str] = []
    for name, path in MODULES.items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE_LINES:
            too_big.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_big.append(f"{name}:{node.name}: {length} lines")
    assert not too_big, too_big
