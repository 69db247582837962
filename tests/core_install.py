"""``iterrefine`` as ``pip install iterrefine`` (no extras) would run it, inside this venv.

A fresh venv per test run would take minutes; instead every distribution this venv holds
beyond the core's dependency closure (pyproject's ``dependencies``, followed through the
installed packages' own requirements) is made absent: its top-level modules are ``None`` in
``sys.modules`` (an import fails as a missing module does, ``find_spec`` says None), and
``weed`` (the ``disk`` extra's program) is not found. The real venv is measured by
``benchmarks/install_size.py``.

Run as a program: ``python tests/core_install.py ARGV...`` with ``ITERREFINE_ABSENT`` (a
JSON list of module names) in the environment runs ``iterrefine ARGV...`` that way;
``python tests/core_install.py --each JSON`` runs each argv of a JSON list in turn, in one
process, and prints a JSON list of ``{"code", "stderr"}`` (a traceback, if one escaped,
is in ``stderr``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata as metadata
import io
import json
import os
import shutil
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: What `python3 -m venv` puts in every venv (ensurepip), beside the project's own.
_IN_EVERY_VENV = frozenset({"pip", "setuptools"})


def closure(name: str, extras: Iterable[str] = ()) -> set[str]:
    """Canonical names of ``name`` and everything it requires with ``extras``, installed."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[tuple[str, frozenset[str]]] = set()
    found: set[str] = set()
    todo = [(canonicalize_name(name), frozenset(extras))]
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.add(key)
        dist_name, wanted = key
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            continue  # not for this platform or Python (its marker was false)
        found.add(dist_name)
        for text in dist.requires or ():
            req = Requirement(text)
            env_extras = sorted(wanted) or [""]
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in env_extras):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return found


def core_distributions() -> set[str]:
    return closure("iterrefine") | set(_IN_EVERY_VENV)


@functools.cache
def absent_modules() -> list[str]:
    """Top-level modules a core install lacks: every provider of each is beyond the core."""
    from packaging.utils import canonicalize_name

    core = core_distributions()
    absent = []
    for module, dists in metadata.packages_distributions().items():
        if module.startswith("__editable__") or not module.isidentifier():
            continue
        if all(canonicalize_name(d) not in core for d in dists):
            absent.append(module)
    return sorted(absent)


def environment() -> dict[str, str]:
    """The environment of a child that runs :func:`main`."""
    return {**os.environ, "ITERREFINE_ABSENT": json.dumps(absent_modules())}


def _hide(modules: Iterable[str]) -> None:
    for module in modules:
        sys.modules[module] = None  # type: ignore[assignment]
    which = shutil.which

    def without_weed(cmd: str, mode: int = os.F_OK | os.X_OK,
                     path: str | None = None) -> str | None:
        return None if os.path.basename(cmd) == "weed" else which(cmd, mode, path)

    shutil.which = without_weed  # type: ignore[assignment]


def _each(commands: list[list[str]]) -> list[dict[str, Any]]:
    from iterrefine.cli import main as iterrefine

    results = []
    for argv in commands:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                code: object = iterrefine(argv)
            except SystemExit as exited:
                code = exited.code
            except BaseException:
                traceback.print_exc()
                code = "traceback"
        results.append({"code": code, "stderr": err.getvalue()})
    return results


def main() -> int:
    _hide(json.loads(os.environ["ITERREFINE_ABSENT"]))
    if sys.argv[1:2] == ["--each"]:
        print(json.dumps(_each(json.loads(sys.argv[2]))))
        return 0
    from iterrefine.cli import main as iterrefine

    return iterrefine(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
