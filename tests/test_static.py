"""Static checks are part of the test suite: ruff and strict mypy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_ruff_is_clean() -> None:
    """ruff finds nothing in the library, the stages, the tests and the benchmarks."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "iterrefine", "consumers", "tests", "benchmarks"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    """mypy --strict (configured in pyproject.toml) passes on iterrefine/, consumers/ included.

    consumers/ is checked as ``iterrefine.consumers`` (through the iterrefine/consumers
    symlink), the name it is installed and imported under.
    """
    result = subprocess.run(
        [sys.executable, "-m", "mypy"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean_on_benchmarks() -> None:
    """mypy --strict passes on benchmarks/: a library signature change breaks this, not a run."""
    # The benchmarks run as scripts and import each other as top-level modules
    # (``import harness``): with benchmarks/ as an explicit package base they are checked
    # under those names, and calls between them are checked too. Same settings as above,
    # so the .mypy_cache entries of iterrefine/ are shared with that test.
    scripts = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "benchmarks").glob("*.py")
                     if path.name != "__init__.py")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--explicit-package-bases", *scripts],
        cwd=ROOT, capture_output=True, text=True, check=False,
        env={**os.environ, "MYPYPATH": "benchmarks"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
