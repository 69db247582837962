"""Packaging: consumers/ installs as iterrefine.consumers, never as a top-level package."""

from __future__ import annotations

import shutil
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


@pytest.mark.unit
def test_the_package_directory_is_the_top_level_consumers() -> None:
    """iterrefine/consumers is the symlink to consumers/: one copy of the stages."""
    link = ROOT / "iterrefine" / "consumers"
    assert link.is_symlink() and link.resolve() == (ROOT / "consumers").resolve()


def _wheel(source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """``pip wheel`` of ``source`` with the venv's setuptools (no download: no network)."""
    return subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "--no-build-isolation", "-w", str(out), str(source)],
                          capture_output=True, text=True, check=False)


def _checkout_without_symlinks(tmp_path: Path) -> Path:
    """The repository's files as a checkout with ``core.symlinks = false`` leaves them."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    copy = tmp_path / "checkout"
    for name in files:
        source, target = ROOT / name, copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.write_text(str(source.readlink()))  # what Git writes without symlinks
        elif source.is_file():
            shutil.copy2(source, target)
    return copy


@pytest.mark.slow
def test_a_checkout_without_symlinks_refuses_to_build_a_wheel_without_stages(
    tmp_path: Path,
) -> None:
    """The link as a 12-byte text file: the build stops, naming the cause and the fix."""
    checkout = _checkout_without_symlinks(tmp_path)
    assert (checkout / "iterrefine" / "consumers").read_text() == "../consumers"
    result = _wheel(checkout, tmp_path / "wheels")
    assert result.returncode != 0
    assert "made without symlinks" in result.stdout + result.stderr
    assert "core.symlinks=true" in result.stdout + result.stderr
    assert not list((tmp_path / "wheels").glob("*.whl"))


@pytest.mark.slow
def test_the_wheel_ships_iterrefine_consumers_and_no_top_level_package(tmp_path: Path) -> None:
    """The built wheel holds iterrefine/consumers/*.py and no consumers/ of its own."""
    built = _wheel(ROOT, tmp_path)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("iterrefine-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    stages = {Path(n).name for n in names if n.startswith("iterrefine/consumers/")}
    assert {"__init__.py", "score.py", "route.py", "rounds.py"} <= stages
    assert not [n for n in names if n.startswith("consumers/")]
