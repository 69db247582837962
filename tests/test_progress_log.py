"""Progress in logs: off a terminal, ``run_progress`` events say what a bar would show."""

from __future__ import annotations

import argparse
import asyncio

import pytest
from structlog.testing import capture_logs

from iterrefine.app._meter import RunMeter
from iterrefine.cli._run_summary import DEFAULT_PROGRESS_EVERY_S, progress_every_s
from iterrefine.config import LLMRoleConfig
from iterrefine.llm import LLMStats

PRICED = {"strong": LLMRoleConfig(price_in_per_mtok=2.0, price_out_per_mtok=10.0)}


@pytest.mark.unit
def test_events_are_on_by_default_only_where_no_bar_is_drawn() -> None:
    """Default: every 10 s when stderr is not a terminal, none on one; the flag wins; 0 = off."""
    def args(value: float | None) -> argparse.Namespace:
        return argparse.Namespace(progress_every_s=value)
    assert progress_every_s(args(None), terminal=False) == DEFAULT_PROGRESS_EVERY_S == 10.0
    assert progress_every_s(args(None), terminal=True) is None
    assert progress_every_s(args(2.5), terminal=True) == 2.5
    assert progress_every_s(args(0), terminal=False) is None


@pytest.mark.unit
async def test_each_event_carries_items_rate_eta_calls_tokens_and_money_so_far() -> None:
    """30 of 120 done after ~0.3 s, 1M+0.1M tokens at 2/10 per million: money 3.0, ETA ~3x."""
    stats = {"strong": LLMStats(requests=40, prompt_tokens=1_000_000, completion_tokens=100_000)}
    meter = RunMeter(lambda: stats, PRICED, budget=None, progress_every_s=0.1,
                     stop=asyncio.Event())
    meter.on_ingested(120)
    meter.on_progress(10)
    meter.on_progress(20)
    with capture_logs() as logs:
        watching = asyncio.create_task(meter.watch())
        await asyncio.sleep(0.35)
        watching.cancel()
    events = [e for e in logs if e["event"] == "run_progress"]
    assert len(events) >= 2
    last = events[-1]
    assert (last["done"], last["total"], last["calls"]) == (30, 120, 40)
    assert (last["prompt_tokens"], last["completion_tokens"], last["money"]) == (
        1_000_000, 100_000, 3.0)
    assert last["rate_per_s"] == pytest.approx(30 / last["elapsed_s"], rel=0.3)
    assert last["eta_s"] == pytest.approx(90 / last["rate_per_s"], rel=0.05)
    before_total = RunMeter(dict, {}, budget=None, progress_every_s=1, stop=asyncio.Event())
    assert before_total.snapshot()["eta_s"] is None and before_total.snapshot()["money"] is None
