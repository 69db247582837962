"""docs/writing-a-stage.md works as written: its three files run in a fresh project."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "writing-a-stage.md"
#: The file each complete code block of the guide is, by the line that names it.
FILES = ("near_duplicates.py", "iterrefine.toml", "test_near_duplicates.py")


def guide_files() -> dict[str, str]:
    """Each file the guide names (a line "`NAME`:") with the code block that follows it."""
    text = GUIDE.read_text()
    found: dict[str, str] = {}
    for name in FILES:
        match = re.search(rf"^`{re.escape(name)}`:\n\n```\w+\n(.*?)^```", text, re.M | re.S)
        assert match is not None, f"the guide no longer shows {name} as a complete block"
        found[name] = match.group(1)
    return found


@pytest.mark.unit
def test_the_guide_shows_the_example_stage_as_it_is_in_the_repo() -> None:
    """The guide's module is examples/custom_stage/near_duplicates.py's code (docstring aside)."""
    shown = guide_files()["near_duplicates.py"]
    example = (ROOT / "examples" / "custom_stage" / "near_duplicates.py").read_text()

    def code(text: str) -> list[str]:
        body = re.sub(r'^""".*?"""\n', "", text, flags=re.S)  # the module docstring
        return [line for line in body.splitlines()
                if line.strip() and not line.strip().startswith("#")
                and not line.startswith("from __future__")]

    assert [line.split("#")[0].rstrip() for line in code(shown)] == [
        line.split("#")[0].rstrip() for line in code(example)]


@pytest.mark.slow
def test_the_guides_files_pass_their_own_tests_in_a_fresh_project(tmp_path: Path) -> None:
    """Copied into an empty directory, the guide's module, config and test pass as written."""
    for name, body in guide_files().items():
        (tmp_path / name).write_text(body)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_near_duplicates.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout
