"""Dependencies point one way: CLI → app/pipeline → stages → mechanisms (read from the code)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The composition root and the commands: the only mechanism-side modules that may
#: import the stages.
COMPOSERS = {"iterrefine/pipeline.py", "iterrefine/app.py", "iterrefine/testing.py"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _modules(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "consumers" not in p.parts[-2:])


def test_mechanisms_never_import_the_stages_or_the_cli() -> None:
    """Only the composition root and the CLI import iterrefine.consumers; nothing imports cli."""
    for path in _modules("iterrefine"):
        name = str(path.relative_to(ROOT))
        imports = _imports(path)
        if not name.startswith("iterrefine/cli/"):
            assert not any(i.startswith("iterrefine.cli") for i in imports), name
        if name not in COMPOSERS and not name.startswith("iterrefine/cli/"):
            assert not any(i.startswith("iterrefine.consumers") for i in imports), name
    assert not any(i.startswith("iterrefine.llm.tasks")
                   for i in _imports(ROOT / "iterrefine" / "context.py"))


def test_a_stage_never_imports_a_sibling_stage() -> None:
    """Stages share decisions through small helper modules, never through each other."""
    stages = {"score", "route", "refine", "review", "align"}
    for path in (ROOT / "consumers").glob("*.py"):
        if path.stem in stages:
            siblings = {f"iterrefine.consumers.{s}" for s in stages - {path.stem}}
            assert not _imports(path) & siblings, path.name
