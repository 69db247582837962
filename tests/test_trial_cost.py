"""Trial runs (--limit), cost and the estimate for the whole input, the ETA bar and logs."""

from __future__ import annotations

import asyncio
import io
import json
import math
import sys
import uuid
from pathlib import Path

import httpx2
import pytest
import structlog
from rich.console import Console

from iterrefine.app.pricing import cost_summary, describe_cost, t95
from iterrefine.cli.progress import run_progress
from iterrefine.config import LLMRoleConfig
from iterrefine.llm import LLMClient
from iterrefine.observe.logging import UNIT_OF_WORK

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


@pytest.mark.unit
def test_the_estimate_weighs_each_trial_item_by_what_it_paid_and_states_an_interval() -> None:
    """N × per-item mean + the calls of no item; a 90% t-interval; items that paid nothing
    count as zeros; --limit's head is not a sample and gets no interval."""
    roles = {"strong": LLMRoleConfig(base_url="http://x", model="m", price_in_per_mtok=1.0,
                                     price_out_per_mtok=1.0)}
    # 4 kept items (1 call), 2 refined over rounds (8 and 14 calls), 2 dead-lettered at
    # ingest (no call), and 2 endpoint probes outside any item.
    usage = {"strong": {**{f"k{i}": (1, 100, 10) for i in range(4)},
                        "r1": (8, 800, 80), "r2": (14, 1400, 140), "": (2, 20, 2)}}
    llm = {"strong": _stats(28, 2620, 262)}
    cost = cost_summary(llm, roles, items_run=8, items_total=80, usage_by_item=usage)
    estimate = cost["estimate_full_input"]
    per_item_calls = [1, 1, 1, 1, 8, 14, 0, 0]
    mean = sum(per_item_calls) / 8  # 3.25
    assert estimate["calls"] == round(80 * mean + 2) == 262
    assert estimate["fixed_calls"] == 2
    sd = (sum((c - mean) ** 2 for c in per_item_calls) / 7) ** 0.5
    half = t95(7) * 80 * sd / 8 ** 0.5 * (1 - 8 / 80) ** 0.5
    low, high = estimate["interval_90"]["calls"]
    assert (low, high) == (round(max(0.0, 262 - half)), round(262 + half))
    assert estimate["basis"] == "sample" and estimate["trial_items"] == 8
    # Calls vary this much (CV 1.6): about 63 of the 80 items for ±15% at 90%.
    n0 = (1.6448536 * sd / mean / 0.15) ** 2
    assert estimate["sample_for_15pct"] == math.ceil(n0 / (1 + n0 / 80)) == 63
    assert dict(describe_cost(cost))["  for ±15%"].startswith("sample about 63 items")
    # The old estimate scaled the totals: the probes ×10 as if each item paid for them.
    assert cost_summary(llm, roles, items_run=8, items_total=80)[
        "estimate_full_input"]["calls"] == 280
    head = cost_summary(llm, roles, items_run=8, items_total=80, usage_by_item=usage,
                        sampled=False)["estimate_full_input"]
    assert head["basis"] == "first_n" and head["interval_90"] is None
    rows = dict(describe_cost({"run": cost["run"], "estimate_full_input": head}))
    assert "use --sample N" in rows["  not a sample"]
    assert (t95(1), t95(30), round(t95(1000), 3)) == (6.314, 1.697, 1.646)


@pytest.mark.unit
async def test_clients_count_each_items_calls_and_tokens_under_its_unit_of_work() -> None:
    """Two calls for item a, one for b, one outside any item: each counted where it belongs."""
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json={
            "id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
    config = LLMRoleConfig(base_url="http://llm.test/v1", model="m", structured_output="off")
    async with (httpx2.AsyncClient(transport=httpx2.MockTransport(answer)) as http,
                LLMClient("strong", config, http_client=http) as llm):
        await llm.chat([{"role": "user", "content": "before"}])  # not counted yet
        llm.keep_usage_by_item()

        async def for_item(item_id: str | None, calls: int) -> None:
            UNIT_OF_WORK.set(None if item_id is None else {"stage": "s", "item_id": item_id})
            for _ in range(calls):
                await llm.chat([{"role": "user", "content": "hi"}])
        # Each in a task of its own, as the runtime runs each message.
        await asyncio.gather(for_item("a", 2), for_item("b", 1), for_item(None, 1))
    assert llm.usage_by_item() == {"a": (2, 14, 6), "b": (1, 7, 3), "": (1, 7, 3)}


async def test_a_sampled_trial_estimates_the_whole_input_with_an_interval(
    broker: str, tmp_path: Path
) -> None:
    """`run --sample 5` of 20 curates 5 and estimates all 20 from what each item paid."""
    source = write_jsonl(tmp_path / "in.jsonl", sample_records(20))
    summary_path = tmp_path / "summary.json"
    argv = ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--llm", "sim",
            "--sample", "5", "--seed", "3", "--summary", str(summary_path), "--no-progress",
            "--bootstrap", broker, "--topic-prefix", f"t{uuid.uuid4().hex[:8]}.",
            "--sim-latency-ms", "5", "--sim-jitter-ms", "2", "--log-level", "warning",
            "--no-cache", "--data-dir", str(tmp_path / "state")]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iterrefine.cli", *argv, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=240)
    assert process.returncode == 0, err.decode()[-2000:]
    assert "estimate, all 20 items" in out.decode() and "90% interval" in out.decode()
    summary = json.loads(summary_path.read_text())
    assert summary["items_in"] == 5
    cost = summary["cost"]
    assert cost["run"]["calls"] > 0 and cost["run"]["money"] is None  # the sim has no prices
    estimate = cost["estimate_full_input"]
    assert (estimate["items"], estimate["basis"]) == (20, "sample")
    fixed = estimate["fixed_calls"]
    assert estimate["calls"] == round((cost["run"]["calls"] - fixed) * 4 + fixed)
    low, high = estimate["interval_90"]["calls"]
    assert low <= estimate["calls"] <= high and high > low
    assert 0 <= estimate["trial"]["refined_share"] <= 1


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
