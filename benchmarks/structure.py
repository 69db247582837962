"""The code's shape, counted: modules per package, largest files, longest functions, circles.

``python benchmarks/structure.py [ROOT]`` prints JSON for the checkout at ROOT (default:
this one). Back-arrows are the imports ``tests/test_layers.py`` refuses (its ordered layer
list), so they are counted only where that list applies; circles are counted over every
import, lazy and ``TYPE_CHECKING`` ones included.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
from collections import Counter
from pathlib import Path
from typing import Any


def _modules(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in ("iterrefine", "consumers"):
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root)
            if folder == "iterrefine" and "consumers" in rel.parts:
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[0] == "consumers":
                parts.insert(0, "iterrefine")
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def _circles(graph: dict[str, set[str]], modules: dict[str, Path]) -> list[list[str]]:
    """Groups of modules that reach each other through imports (Tarjan's strongly connected
    components of more than one module). A package ``__init__`` re-exporting its own
    modules is not a circle: those edges are left out."""
    edges = {m: {t for t in targets if not (modules[m].name == "__init__.py"
                                            and t.startswith(m + "."))}
             for m, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                top = stack.pop()
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


def _functions(modules: dict[str, Path], root: Path) -> list[tuple[int, str]]:
    lengths: list[tuple[int, str]] = []
    for path in modules.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                lengths.append((length, f"{path.relative_to(root)}:{node.name}"))
    return sorted(lengths, reverse=True)


def measure(root: Path) -> dict[str, Any]:
    modules = _modules(root)
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    sizes = sorted(((len(p.read_text().splitlines()), str(p.relative_to(root)))
                    for p in modules.values()), reverse=True)
    per_package = Counter(
        str(p.parent.relative_to(root)) for p in modules.values() if p.name != "__init__.py")
    functions = _functions(modules, root)
    report: dict[str, Any] = {
        "modules_directly_in_iterrefine": per_package.get("iterrefine", 0),
        "modules_per_package": dict(sorted(per_package.items())),
        "largest_files": [{"lines": n, "file": f} for n, f in sizes[:5]],
        "files_over_450_lines": [f for n, f in sizes if n > 450],
        "longest_functions": [{"lines": n, "function": f} for n, f in functions[:5]],
        "functions_over_80_lines": [f for n, f in functions if n > 80],
        "import_circles": [" <-> ".join(c) for c in _circles(graph, modules)],
        "private_modules": sum(1 for m in modules if m.rsplit(".", 1)[-1].startswith("_")
                               and not m.endswith("__init__")),
    }
    layers_test = root / "tests" / "test_layers.py"
    if layers_test.exists() and "LAYERS" in layers_test.read_text():
        # The ordered list the suite checks against, loaded from the file (not a package).
        spec = importlib.util.spec_from_file_location("test_layers", layers_test)
        assert spec is not None and spec.loader is not None
        test_layers = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(test_layers)

        back = [f"{m} -> {t}" for m in modules for t in graph[m]
                if test_layers.layer_of(t)[1] != test_layers.layer_of(m)[1]
                and test_layers.layer_of(t)[0] >= test_layers.layer_of(m)[0]]
        report["back_arrows"] = back
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    args = parser.parse_args()
    print(json.dumps(measure(Path(args.root)), indent=2))


if __name__ == "__main__":
    main()
