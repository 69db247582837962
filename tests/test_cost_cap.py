"""``--max-cost``: new work stops once the spend reaches the cap, exit code 4."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from iterrefine.app._meter import RunMeter, check_cost_cap, money_of
from iterrefine.app.exit_codes import COST_CAP, run_exit_code
from iterrefine.config import LLMRoleConfig
from iterrefine.errors import ConfigError, CostCapReached, LLMUnavailable
from iterrefine.llm import LLMStats
from iterrefine.llm.budget import Budget

from .pipeline_support import sample_records, write_jsonl

ROOT = Path(__file__).parent.parent

PRICES = """
[llm.strong]
price_in_per_mtok = 3.0
price_out_per_mtok = 15.0
[llm.backbone]
price_in_per_mtok = 0.2
price_out_per_mtok = 0.6
"""

PRICED = {"strong": LLMRoleConfig(price_in_per_mtok=3.0, price_out_per_mtok=15.0),
          "backbone": LLMRoleConfig()}


def _run(tmp_path: Path, broker: str, *flags: str, records: int = 60,
         config: str = PRICES) -> subprocess.CompletedProcess[bytes]:
    source = write_jsonl(tmp_path / "in.jsonl", sample_records(records))
    (tmp_path / "c.toml").write_text(config)
    argv = ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--llm", "sim",
            "--config", str(tmp_path / "c.toml"), "--summary", str(tmp_path / "summary.json"),
            "--no-progress", "--bootstrap", broker, "--topic-prefix", f"t{uuid.uuid4().hex[:8]}.",
            "--sim-latency-ms", "20", "--sim-jitter-ms", "5", "--no-cache",
            "--data-dir", str(tmp_path / "state"), *flags]
    return subprocess.run([sys.executable, "-m", "iterrefine.cli", *argv], cwd=ROOT,
                          capture_output=True, timeout=240)


def test_the_cap_stops_new_work_exits_4_and_loses_nothing_already_done(
    broker: str, tmp_path: Path
) -> None:
    """A 60-item run capped at a third of its cost: exit 4, spend under the cap, rows whole."""
    done = _run(tmp_path, broker, "--max-cost", "0.3", "--progress-every-s", "0.2")
    assert done.returncode == COST_CAP, done.stderr.decode()[-3000:]
    err = done.stderr.decode()
    assert "stopped by the cost cap" in err and "Exit code 4" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    cap = summary["stopped_by_cost_cap"]
    assert cap["max_cost"] == 0.3 and cap["money_at_stop"] <= 0.3
    spent = summary["cost"]["run"]["money"]
    # Every call held its worst case before it was sent: the spend stays under the cap
    # (the full run costs about 0.9), and ends within one call's worst case of it
    # (4,096 completion tokens at 15 per million: 0.06).
    assert 0.3 - 0.07 < spent <= 0.3, spent
    finished = summary["curated"] + summary["rejected"] + summary["dlq"]
    assert 0 < finished < 60 and summary["dlq"] == 0  # abandoned work is not dead-lettered
    assert finished + summary["pending"] == 60
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == summary["curated"] and all(r["status"] != "pending" for r in rows)
    # Progress events off a terminal, with money at the simulator's configured prices.
    events = [json.loads(line) for line in err.splitlines() if '"run_progress"' in line]
    assert events, err[-2000:]
    assert {"done", "total", "rate_per_s", "eta_s", "calls", "prompt_tokens",
            "completion_tokens", "money"} <= events[0].keys()
    assert events[-1]["money"] > 0 and events[-1]["calls"] > 0


def test_a_cap_without_prices_is_refused_before_anything_is_paid(
    broker: str, tmp_path: Path
) -> None:
    """`--max-cost` with no role priced: exit 2 with the fix, nothing written."""
    done = _run(tmp_path, broker, "--max-cost", "1", config="", records=5)
    assert done.returncode == 2
    assert "max_cost needs prices: set price_in_per_mtok" in done.stderr.decode()
    assert not (tmp_path / "out.jsonl").exists() or not (tmp_path / "out.jsonl").read_text()


@pytest.mark.unit
def test_caps_that_cannot_be_kept_are_refused() -> None:
    """Zero, negative or NaN caps, no prices, or several processes: each a clear ConfigError."""
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="above 0"):
            check_cost_cap(bad, PRICED, workers=1)
    with pytest.raises(ConfigError, match="needs prices"):
        check_cost_cap(1.0, {"strong": LLMRoleConfig()}, workers=1)
    with pytest.raises(ConfigError, match="--workers 1"):
        check_cost_cap(1.0, PRICED, workers=2)
    check_cost_cap(1.0, PRICED, workers=1)
    check_cost_cap(None, {}, workers=4)


@pytest.mark.unit
async def test_calls_hold_their_worst_case_wait_for_room_and_stop_for_good_at_the_cap() -> None:
    """Prompt + max_tokens held at the role's prices; a call that fits only later waits;
    one that cannot fit is refused, and so is every call after it."""
    budget = Budget(0.05, PRICED)
    first = await budget.reserve("strong", 1_000, 1_000)  # 0.003 + 0.015
    assert first == pytest.approx(0.018)
    second = await budget.reserve("strong", 1_000, 1_000)
    third = asyncio.create_task(budget.reserve("strong", 1_000, 1_000))  # 0.054 > 0.05
    await asyncio.sleep(0.05)
    assert not third.done()  # waits for the calls in flight
    budget.settle("strong", first, 1_000, 100)  # it cost 0.0045, not 0.018
    assert await asyncio.wait_for(third, 1) == pytest.approx(0.018)
    budget.settle("strong", second, 0, 0)  # failed: nothing spent
    assert budget.spent == pytest.approx(0.0045)
    assert budget.reserved == pytest.approx(0.018)
    budget.settle("strong", 0.018, 10_000, 2_000)  # 0.03 + 0.03: over its estimate
    with pytest.raises(CostCapReached, match=r"cost cap 0\.05 is reached"):
        await budget.reserve("strong", 1_000, 1_000)
    with pytest.raises(CostCapReached):  # even a call that would fit: new work has stopped
        await budget.reserve("backbone", 10, 10)
    assert budget.reached and isinstance(CostCapReached("x"), LLMUnavailable)


@pytest.mark.unit
async def test_the_meter_stops_the_run_once_the_budget_refused_a_call() -> None:
    """A refused call: the run's stop is set and the summary's cap record says why; exit 4."""
    budget = Budget(0.01, PRICED)
    stop = asyncio.Event()
    meter = RunMeter(dict, PRICED, budget=budget, progress_every_s=None, stop=stop)
    watching = asyncio.create_task(meter.watch())
    await asyncio.sleep(0.25)
    assert not stop.is_set()
    with pytest.raises(CostCapReached):
        await budget.reserve("strong", 0, 1_000)
    await asyncio.wait_for(stop.wait(), 2)
    watching.cancel()
    assert meter.cap_reached is not None and meter.cap_reached.max_cost == 0.01
    summary = {"stopped_by_cost_cap": {"max_cost": 0.01}, "complete": False, "dlq": 0,
               "curated": 3, "rejected": 0, "items_in": 9}
    assert run_exit_code(summary, invalid_input=0) == COST_CAP
    spent = {"strong": LLMStats(requests=1, prompt_tokens=1_000_000, completion_tokens=0)}
    assert money_of(spent, PRICED) == 3.0
    assert money_of(spent, {"strong": LLMRoleConfig()}) is None
