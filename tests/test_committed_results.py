"""Committed results and recordings carry no absolute paths of the machine that made them:
a reader elsewhere cannot use them, and they say where a developer keeps files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Paths under the usual roots of a machine's own files, as they appear inside JSON strings.
_ABSOLUTE = re.compile(r'"(?:/(?:home|root|tmp|work|Users|var/folders)/)[^"]*"')


@pytest.mark.unit
def test_committed_results_name_no_absolute_paths() -> None:
    files = [*ROOT.glob("benchmarks/results/*.json"), *ROOT.glob("tests/data/*.jsonl")]
    assert files
    found = {f.relative_to(ROOT).as_posix(): m.group(0)[:80]
             for f in files if (m := _ABSOLUTE.search(f.read_text(encoding="utf-8")))}
    assert found == {}
