"""Observability tells the truth: raw-timing percentiles, buckets reaching the timeouts,
failed re-scores as events and counters, and a metrics endpoint on loopback by default."""

from __future__ import annotations

import asyncio

import httpx2
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from iterrefine.app._summary import build_summary, latency_from_samples
from iterrefine.cli import build_parser
from iterrefine.cli.common import config_from_args
from iterrefine.config import Config, LLMRoleConfig, PipelineConfig
from iterrefine.consumers.align import rescore
from iterrefine.graph.context import PipelineContext
from iterrefine.item.model import Original, Provenance
from iterrefine.item.records import new_item
from iterrefine.llm import LLMClient, LLMStats
from iterrefine.llm.latency import Reservoir, percentile
from iterrefine.observe.http import MetricsServer
from iterrefine.observe.metrics import Metrics

pytestmark = pytest.mark.unit


def completion(text: str) -> httpx2.Response:
    return httpx2.Response(200, json={
        "id": "c", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    })


def test_summary_percentiles_are_the_measured_timings_not_bucket_edges() -> None:
    """Calls of 100-177 s read p99 ≈ 177 s (the issue's summary said 120.0, a bucket edge)."""
    samples = tuple([100.0] * 90 + [150.0] * 9 + [177.0])
    stats = LLMStats(requests=100, latency_sum_s=sum(samples), latency_samples_s=samples)
    latency = latency_from_samples(stats)
    assert latency["max"] == 177.0
    assert latency["p50"] == 100.0
    assert latency["p99"] is not None and 150.0 < latency["p99"] <= 177.0
    assert latency["mean"] == round(sum(samples) / 100, 4)


async def test_client_keeps_raw_latencies_and_the_summary_uses_them() -> None:
    """Each request's wall time is kept; the run summary's p50 is one of them (~70 ms)."""
    async def slow(request: httpx2.Request) -> httpx2.Response:
        await asyncio.sleep(0.07)
        return completion("hi")

    metrics = Metrics(CollectorRegistry())
    config = LLMRoleConfig(base_url="http://llm.test/v1", model="m", structured_output="off")
    async with (
        httpx2.AsyncClient(transport=httpx2.MockTransport(slow)) as http,
        LLMClient("strong", config, http_client=http, metrics=metrics) as llm,
    ):
        for _ in range(3):
            await llm.chat([{"role": "user", "content": "hi"}])
        stats = llm.stats()
    assert len(stats.latency_samples_s) == 3 and min(stats.latency_samples_s) >= 0.07
    summary = build_summary([], items_in=0, invalid_at_ingest=0, wall_time_s=1.0,
                            simulated=False, llm_stats={"strong": stats}, metrics=metrics)
    p50 = summary["llm"]["strong"]["latency_s"]["p50"]
    assert p50 == round(percentile(stats.latency_samples_s, 0.5) or 0, 4)
    assert 0.07 <= p50 < 0.1  # a bucket-edge estimate would interpolate inside (0.05, 0.1]


def test_latency_reservoir_is_bounded_and_keeps_the_exact_sum() -> None:
    """10,000 timings into a 100-slot reservoir: 100 kept, the sum and count exact."""
    reservoir = Reservoir(100)
    for n in range(10_000):
        reservoir.add(float(n))
    assert len(reservoir.sample()) == 100
    assert reservoir.seen == 10_000 and reservoir.total == sum(range(10_000))


def test_latency_buckets_reach_the_configured_timeout() -> None:
    """With a 900 s timeout a 850 s call lands in a finite bucket (le=900), not in +Inf only."""
    metrics = Metrics(CollectorRegistry(), longest_timeout_s=900.0)
    metrics.llm_seconds.labels(role="strong").observe(850.0)
    buckets = {s.labels["le"]: s.value for m in metrics.llm_seconds.collect()
               for s in m.samples if s.name.endswith("_bucket")}
    assert buckets["900.0"] == 1 and buckets["750.0"] == 0
    assert "120.0" in buckets  # the dashboard's finer edges stay


async def test_failed_rescore_is_an_event_and_a_counter() -> None:
    """An unreadable re-score leaves no final score, logs rescore_failed and counts it."""
    metrics = Metrics(CollectorRegistry())
    config = LLMRoleConfig(base_url="http://llm.test/v1", model="m", structured_output="off")
    async with (
        httpx2.AsyncClient(transport=httpx2.MockTransport(lambda r: completion("Hmm."))) as http,
        LLMClient("strong", config, http_client=http, metrics=metrics) as llm,
    ):
        ctx = PipelineContext(PipelineConfig(parse_retries=1), {"strong": llm}, metrics,
                              Provenance(prompt_version="t", models={}, simulated=False))
        item = new_item(Original(instruction="Add 2 and 2.", input="", output="4"))
        with capture_logs() as logs:
            rescored = await rescore(ctx, item)
    assert rescored.final_judgement is None
    events = [e for e in logs if e["event"] == "rescore_failed"]
    assert len(events) == 1 and events[0]["log_level"] == "warning"
    summary = build_summary([], items_in=0, invalid_at_ingest=0, wall_time_s=1.0,
                            simulated=False, llm_stats={}, metrics=metrics)
    assert summary["rescore_failures"] == 1


async def test_metrics_endpoint_binds_loopback_by_default() -> None:
    """`run` (and a worker without --metrics-host) serve /metrics on 127.0.0.1 only."""
    assert Config().metrics_host == "127.0.0.1"
    async with MetricsServer(CollectorRegistry(), 0) as server:
        assert server.host == "127.0.0.1"
        async with httpx2.AsyncClient() as http:
            response = await http.get(f"http://127.0.0.1:{server.port}/healthz")
    assert response.status_code == 200


def test_worker_metrics_host_is_a_flag() -> None:
    """`worker --metrics-host 0.0.0.0` (containers) reaches the config; default loopback."""
    parser = build_parser()
    args = parser.parse_args(["worker", "score", "--metrics-port", "9100",
                              "--metrics-host", "0.0.0.0"])
    assert config_from_args(args).metrics_host == "0.0.0.0"
    default = parser.parse_args(["worker", "score", "--metrics-port", "9100"])
    assert config_from_args(default).metrics_host == "127.0.0.1"
