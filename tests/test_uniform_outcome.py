"""A run where every item ends the same way says so loudly and exits 6 (issue 27) unless
told otherwise: a judge that rejects everything is a setup problem, not a result."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from iterrefine.app.exit_codes import (
    DEAD_LETTERED,
    OK,
    UNIFORM_OUTCOME,
    run_exit_code,
    uniform_outcome,
)
from iterrefine.testing import ScriptedLLM
from tests.scripted_answers import UNUSABLE


@pytest.mark.unit
@pytest.mark.parametrize(
    ("summary", "invalid", "outcome", "code", "allowed_code"),
    [
        ({"complete": True, "dlq": 0, "curated": 0, "rejected": 4, "items_in": 4}, 0,
         "rejected", UNIFORM_OUTCOME, OK),
        ({"complete": True, "dlq": 4, "curated": 0, "rejected": 0, "items_in": 4}, 0,
         "dlq", UNIFORM_OUTCOME, DEAD_LETTERED),
        # Invalid input records are not processing outcomes: 2 rejected of 2 valid ones.
        ({"complete": True, "dlq": 1, "curated": 0, "rejected": 2, "items_in": 3}, 1,
         "rejected", UNIFORM_OUTCOME, OK),
        # One item cannot show a pattern; mixed outcomes are a result.
        ({"complete": True, "dlq": 0, "curated": 0, "rejected": 1, "items_in": 1}, 0,
         None, OK, OK),
        ({"complete": True, "dlq": 1, "curated": 0, "rejected": 3, "items_in": 4}, 0,
         None, DEAD_LETTERED, DEAD_LETTERED),
    ],
)
def test_uniform_outcomes_exit_6_unless_allowed(
    summary: dict[str, object], invalid: int, outcome: str | None, code: int,
    allowed_code: int,
) -> None:
    """All rejected or all dead-lettered (two items or more): 6; allowed: the usual code."""
    assert uniform_outcome(summary, invalid_input=invalid) == outcome
    assert run_exit_code(summary, invalid_input=invalid) == code
    assert run_exit_code(summary, invalid_input=invalid, allow_uniform=True) == allowed_code


def _inputs(tmp_path: Path, base_url: str) -> tuple[Path, Path]:
    tmp_path.mkdir(exist_ok=True)
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Q{n}?", "output": f"A{n}."}) + "\n"
                            for n in range(3)))
    config = tmp_path / "c.toml"
    config.write_text("".join(
        f'[llm.{role}]\nbase_url = "{base_url}"\nmodel = "m"\nmax_retries = 1\n'
        for role in ("strong", "backbone")))
    return data, config


async def _run(tmp_path: Path, base_url: str, *extra: str) -> tuple[int, str]:
    data, config = _inputs(tmp_path, base_url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iterrefine.cli", "run", str(data), "-o",
        str(tmp_path / "out.jsonl"), "--config", str(config), "--no-progress",
        "--data-dir", str(tmp_path / "state"), "--no-cache", *extra,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=dict(os.environ))
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


@pytest.mark.slow
async def test_a_run_rejecting_everything_says_so_and_exits_6(tmp_path: Path) -> None:
    """Every item judged unusable: a loud warning naming the rejected file, exit 6; with
    --allow-uniform-outcome the same run exits 0 (still warning)."""
    async with ScriptedLLM({"score": UNUSABLE}) as llm:
        code, err = await _run(tmp_path, llm.base_url)
        assert code == UNIFORM_OUTCOME, err[-2000:]
        assert "all 3 items were rejected" in err and "exit code 6" in err
        code, err = await _run(tmp_path / "again", llm.base_url, "--allow-uniform-outcome")
    assert code == OK, err[-2000:]
    assert "all 3 items were rejected" in err and "exit code 6" not in err
