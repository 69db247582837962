"""`iterrefine run --llm sim --preset paper`: the whole CLI on the real embedded broker."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

import pytest

from iterrefine.io.export import load_rows

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.slow
async def test_run_with_the_paper_preset_end_to_end(broker: str, tmp_path: Path) -> None:
    """--preset paper runs end to end; the summary prints and records the preset's table."""
    source = tmp_path / "input.jsonl"
    source.write_text("".join((EXAMPLES / "dolly_sample.jsonl").read_text().splitlines(True)[:30]))
    config = tmp_path / "iterrefine.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = "{broker}"\ntopic_prefix = "p{uuid.uuid4().hex[:8]}."\n'
        "[runtime]\ncommit_interval_ms = 200\nsession_timeout_ms = 3000\n"
        "heartbeat_interval_ms = 500\n"
    )
    summary_path = tmp_path / "summary.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iterrefine.cli", "run", str(source), "--llm", "sim",
        "-o", str(tmp_path / "out.jsonl"), "--preset", "paper", "--config", str(config),
        "--sim-latency-ms", "5", "--sim-jitter-ms", "2", "--sim-low-share", "0.8",
        "--no-progress", "--timeout-s", "90", "--summary", str(summary_path),
        env={**os.environ, "COLUMNS": "160"}, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=150)
    assert process.returncode == 0, (stdout + stderr).decode()[-3000:]
    printed = stdout.decode()
    assert "preset paper" in printed and "keep_last_revision" in printed
    summary = json.loads(summary_path.read_text())
    settings = {row["key"]: row for row in summary["preset"]["settings"]}
    assert settings["pipeline.exhausted_policy"]["effective"] == "keep_last_revision"
    assert settings["llm_defaults.temperature"]["source"] == "preset"
    rows = load_rows(tmp_path / "out.jsonl")
    refined = [row["item"] for row in rows if row["status"] == "refined"]
    assert refined, "the simulator judges most items low: some must be refined"
    assert {item["alignment_mode"] for item in refined} == {"complete"}
    assert all(row["status"] != "unrefined" for row in rows)  # exhausted items keep a revision
    for item in refined:
        assert item["converged"] in (True, False)
        assert item["instruction"] == next(
            r for r in reversed(item["rounds"]) if not r["revision_failed"])["instruction"]
