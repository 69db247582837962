"""`iterrefine run` in a hostile environment: data dirs it cannot write."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SAMPLE = Path(__file__).parent.parent / "examples" / "dolly_sample.jsonl"


@contextlib.contextmanager
def read_only_dir(path: Path) -> Iterator[Path]:
    """``path`` made unwritable even for root (immutable), or by mode for anyone else."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True,
                                        check=False).returncode != 0:
        pytest.skip("running as root where chattr +i is not available: no read-only dir")
    try:
        yield path
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


def run(data_dir: Path, tmp_path: Path, storage: str) -> subprocess.CompletedProcess[str]:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:3]))
    return subprocess.run(
        [sys.executable, "-m", "iterrefine.cli", "run", str(source),
         "-o", str(tmp_path / "out" / "out.jsonl"), "--llm", "sim", "--data-dir", str(data_dir),
         "--broker-storage", storage, "--no-progress", "--log-level", "error"],
        capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_a_read_only_data_dir_is_named_with_the_fix(tmp_path: Path, storage: str) -> None:
    """Exit 2 naming the data dir and --data-dir, on both storages: no traceback, no
    blame on python3 or advice to reinstall, no output written."""
    with read_only_dir(tmp_path / "data") as data_dir:
        done = run(data_dir, tmp_path, storage)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert str(data_dir) in done.stderr and "--data-dir" in done.stderr
    assert "python" not in done.stderr.lower() and "reinstall" not in done.stderr.lower()
    assert not (tmp_path / "out" / "out.jsonl").exists()


def test_a_data_dir_under_a_file_is_named_with_the_fix(tmp_path: Path) -> None:
    """A data dir that cannot be made (a file in its path): the same clear exit 2."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = run(blocker / "data", tmp_path, "disk")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "--data-dir" in done.stderr
