"""Static checks are part of the test suite: ruff and strict mypy."""

from __future__ import annotations

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
    """mypy --strict (configured in pyproject.toml) passes on iterrefine/ and consumers/."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "iterrefine", "consumers"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
