"""One retry layer and the per-role circuit: outages pause calls, they never fail items."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import msgspec
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from iterrefine.app.run import RunOptions, run_pipeline, sim_roles
from iterrefine.config import LLMRoleConfig
from iterrefine.errors import LLMRetriesExhausted, LLMUnavailable
from iterrefine.llm import LLMClient
from iterrefine.llm.circuit import Circuit
from iterrefine.observe.metrics import Metrics
from iterrefine.retry import Backoff, is_retriable
from iterrefine.sim import SimConfig, SimServer

from .helpers import unique_config, wait_until

MESSAGES = [{"role": "user", "content": "Hi?"}]

OK = {"model": "m", "choices": [{"message": {"content": "hello"}}],
      "usage": {"prompt_tokens": 1, "completion_tokens": 1}}


class Endpoint:
    """A scripted endpoint: ``mode`` decides every answer; requests are counted by path."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.chat = 0
        self.probes = 0

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        # Probes: GET /models (preflight, rejected keys) or a one-token completion.
        if request.url.path.endswith("/models") or b'"max_tokens":1,' in request.content:
            self.probes += 1
        else:
            self.chat += 1
        if self.mode == "down":
            raise httpx2.ConnectError("refused")
        if self.mode == "401":
            return httpx2.Response(401, json={"error": {"message": "bad key"}})
        if self.mode == "429":
            return httpx2.Response(429, json={"error": {"message": "slow down"}})
        if request.url.path.endswith("/models"):
            return httpx2.Response(200, json={"data": []})
        return httpx2.Response(200, json=OK)


@asynccontextmanager
async def client_for(endpoint: Endpoint, metrics: Metrics | None = None,
                     **overrides: Any) -> AsyncIterator[LLMClient]:
    config = LLMRoleConfig(**{"base_url": "http://llm.test/v1", "model": "m", "max_retries": 6,
                              "probe_interval_s": 0.05, **overrides})
    async with (
        httpx2.AsyncClient(transport=httpx2.MockTransport(endpoint)) as http,
        LLMClient("strong", config, metrics=metrics, http_client=http,
                  backoff=Backoff(base_s=0.001, max_s=0.002)) as client,
    ):
        yield client


@pytest.mark.unit
async def test_an_always_failing_call_costs_its_budget_once() -> None:
    """Always 429: max_retries + 1 requests, then a non-retriable error (no handler retry)."""
    endpoint = Endpoint("429")
    async with client_for(endpoint) as client:
        with pytest.raises(LLMRetriesExhausted) as caught:
            await client.chat(MESSAGES)
    assert endpoint.chat == 7 and not is_retriable(caught.value)


@pytest.mark.unit
async def test_an_outage_pauses_calls_until_a_probe_answers() -> None:
    """Refused connections open the circuit (metric 1, a log naming the fix); calls wait,
    only probes are sent, and the calls finish once the endpoint is back."""
    endpoint = Endpoint("down")
    metrics = Metrics(CollectorRegistry())
    gauge = {"role": "strong"}
    with capture_logs() as logs:
        async with client_for(endpoint, metrics, circuit_failures=3) as client:
            calls = [asyncio.create_task(client.chat(MESSAGES)) for _ in range(10)]
            await wait_until(lambda: client.circuit.is_open, interval_s=0.01)
            assert metrics.registry.get_sample_value("iterrefine_llm_circuit_open", gauge) == 1
            await asyncio.sleep(0.3)
            failed_while_down = endpoint.chat
            endpoint.mode = "up"
            results = await asyncio.gather(*calls)
    assert [r.text for r in results] == ["hello"] * 10
    assert failed_while_down <= 10  # at most one failed request per waiting call
    assert endpoint.probes >= 2
    assert metrics.registry.get_sample_value("iterrefine_llm_circuit_open", gauge) == 0
    opened = [e for e in logs if e["event"] == "llm_circuit_open"]
    assert len(opened) == 1 and "base_url" in opened[0]["fix"]


@pytest.mark.unit
async def test_a_rejected_key_opens_at_once_and_give_up_fails_the_waiters() -> None:
    """One 401 opens the circuit; after give_up every waiting call raises LLMUnavailable."""
    endpoint = Endpoint("401")
    seen: list[Circuit] = []
    async with client_for(endpoint) as client:
        client.circuit._on_open = seen.append  # what `run` installs (StopOnRejectedKey)
        call = asyncio.create_task(client.chat(MESSAGES))
        await wait_until(lambda: seen, interval_s=0.01)
        assert seen[0].open_reason == "auth" and endpoint.chat == 1
        seen[0].give_up("the API key was rejected")
        with pytest.raises(LLMUnavailable, match="rejected"):
            await call


@pytest.mark.slow
async def test_the_simulator_stopping_mid_run_dead_letters_nothing(
    broker: str, tmp_path: Path
) -> None:
    """The LLM server goes away for 30 s mid-run: items wait, 0 reach the DLQ."""
    from .pipeline_support import sample_records, write_jsonl

    fast = SimConfig(latency_ms=20, jitter_ms=5, capacity=64)
    outage_s = 30.0  # the outage: longer than every retry budget
    sim = SimServer(fast, port=0)
    await sim.start()
    port = sim.port
    base = unique_config(retry_base_s=0.02, retry_max_s=0.2)
    config = sim_roles(msgspec.structs.replace(
        base, kafka=msgspec.structs.replace(base.kafka, bootstrap_servers=broker)),
        sim.base_url, fast)
    config = msgspec.structs.replace(config, llm={
        role: msgspec.structs.replace(c, probe_interval_s=0.5, timeout_s=5.0)
        for role, c in config.llm.items()})
    source = write_jsonl(tmp_path / "in.jsonl", sample_records(60))
    metrics = Metrics()
    run = asyncio.create_task(run_pipeline(config, RunOptions(
        input=source, output=tmp_path / "out.jsonl", timeout_s=120), metrics=metrics))
    try:
        await wait_until(lambda: sim.stats.total >= 60, interval_s=0.01)  # well into the run
        await sim.aclose()
        went_down = time.monotonic()
        await asyncio.sleep(outage_s)
        sim = SimServer(fast, port=port)
        await sim.start()
        result = await run
    finally:
        await sim.aclose()
    assert result.complete and result.summary["dlq"] == 0
    assert result.summary["curated"] + result.summary["rejected"] == 60
    assert sum(s["circuit_opened"] for s in result.summary["llm"].values()) >= 1
    assert time.monotonic() - went_down >= outage_s
