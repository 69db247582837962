"""Trial runs (--limit), cost and the estimate for the whole input, the ETA bar and logs."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import uuid
from pathlib import Path

import pytest
import structlog
from rich.console import Console

from iterrefine.app.pricing import cost_summary
from iterrefine.cli.progress import run_progress
from iterrefine.config import LLMRoleConfig

from .pipeline_support import sample_records, write_jsonl

ROOT = Path(__file__).parent.parent


def _stats(requests: int, prompt: int, completion: int) -> dict[str, int]:
    return {"requests": requests, "errors": 0, "prompt_tokens": prompt,
            "completion_tokens": completion}


@pytest.mark.unit
def test_money_is_tokens_times_role_prices_and_a_trial_scales_to_the_input() -> None:
    """Per-role prices per million tokens give money; a 10-of-40 trial estimates ×4."""
    roles = {
        "strong": LLMRoleConfig(base_url="http://x", model="m", price_in_per_mtok=3.0,
                                price_out_per_mtok=15.0),
        "backbone": LLMRoleConfig(base_url="http://x", model="m"),
    }
    llm = {"strong": _stats(30, 1_000_000, 100_000), "backbone": _stats(20, 500, 500)}
    cost = cost_summary(llm, roles, items_run=10, items_total=40)
    assert cost["run"]["money"] == 4.5
    assert cost["run"]["money_by_role"] == {"strong": 4.5, "backbone": None}
    assert cost["run"]["calls"] == 50
    estimate = cost["estimate_full_input"]
    assert (estimate["items"], estimate["calls"], estimate["money"]) == (40, 200, 18.0)
    assert "estimate_full_input" not in cost_summary(llm, roles, items_run=10, items_total=None)
    cached = {**llm, "backbone": {**llm["backbone"], "cache_hits": 3}}
    assert cost_summary(cached, roles, items_run=10, items_total=40)[
        "estimate_full_input"]["low_by_cache_hits"]


async def test_limit_runs_a_trial_and_the_summary_estimates_the_whole_input(
    broker: str, tmp_path: Path
) -> None:
    """`run --limit 5` on 20 records curates 5 and estimates calls and tokens for all 20."""
    source = write_jsonl(tmp_path / "in.jsonl", sample_records(20))
    summary_path = tmp_path / "summary.json"
    argv = ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--llm", "sim",
            "--limit", "5", "--summary", str(summary_path), "--no-progress",
            "--bootstrap", broker, "--topic-prefix", f"t{uuid.uuid4().hex[:8]}.",
            "--sim-latency-ms", "5", "--sim-jitter-ms", "2", "--log-level", "warning",
            "--no-cache", "--data-dir", str(tmp_path / "state")]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iterrefine.cli", *argv, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=240)
    assert process.returncode == 0, err.decode()[-2000:]
    assert "estimate, all 20 items" in out.decode()
    summary = json.loads(summary_path.read_text())
    assert summary["items_in"] == 5
    cost = summary["cost"]
    assert cost["run"]["calls"] > 0 and cost["run"]["money"] is None  # the sim has no prices
    assert cost["estimate_full_input"]["items"] == 20
    assert cost["estimate_full_input"]["calls"] == round(cost["run"]["calls"] * 4)


@pytest.mark.unit
def test_log_lines_print_above_the_live_bar() -> None:
    """While the bar is live, log events go through the bar's console (not raw stderr)."""
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    with run_progress(console, show=True, log_json=True, log_level="info") as progress:
        task = progress.add_task("items", total=4)
        structlog.get_logger("test").info("while_the_bar_is_live", n=1)
        progress.advance(task, 2)
    text = buffer.getvalue()
    assert "while_the_bar_is_live" in text
    assert "ETA" in text
