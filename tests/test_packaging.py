"""Packaging: consumers/ installs as iterrefine.consumers, never as a top-level package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_consumers_import_under_iterrefine_only(tmp_path: Path) -> None:
    """From another directory, `import consumers` fails and iterrefine.consumers works."""
    probe = ("import importlib.util, iterrefine.consumers as c; "
             "print(importlib.util.find_spec('consumers') is None, c.STAGE_NAMES)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                            text=True, check=True)
    assert result.stdout.split(maxsplit=1) == [
        "True", "('score', 'route', 'refine', 'review', 'align')\n"]


def test_the_package_directory_is_the_top_level_consumers() -> None:
    """iterrefine/consumers is the symlink to consumers/: one copy of the stages."""
    link = ROOT / "iterrefine" / "consumers"
    assert link.is_symlink() and link.resolve() == (ROOT / "consumers").resolve()


@pytest.mark.slow
def test_the_wheel_ships_iterrefine_consumers_and_no_top_level_package(tmp_path: Path) -> None:
    """The built wheel holds iterrefine/consumers/*.py and no consumers/ of its own."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("iterrefine-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    stages = {Path(n).name for n in names if n.startswith("iterrefine/consumers/")}
    assert {"__init__.py", "score.py", "route.py", "rounds.py"} <= stages
    assert not [n for n in names if n.startswith("consumers/")]
