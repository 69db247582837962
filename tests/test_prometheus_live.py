"""deploy/'s PromQL against a real Prometheus that scraped a real pipeline run.

Prometheus (Debian's ``prometheus`` package; ``.ci/run`` installs it) scrapes
``iterrefine run``'s ``/metrics`` endpoint every second while a small run goes
through the embedded broker and the LLM simulator, with injected 429s,
unreadable answers and malformed input lines so that every metric family has
samples. Then every dashboard panel expression and every alert expression is
evaluated through Prometheus' HTTP API: each must evaluate, and each metric it
names must exist in what Prometheus scraped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import yaml

from iterrefine.app.run import RunOptions, run_pipeline, sim_roles
from iterrefine.config import CacheConfig, SelectionConfig
from iterrefine.observe.assets import (
    alert_expressions,
    dashboard_expressions,
    expand_grafana_variables,
    exported_series_names,
    metric_names,
)
from iterrefine.observe.http import MetricsServer
from iterrefine.observe.metrics import Metrics
from iterrefine.processes import free_port
from iterrefine.sim import SimConfig, SimServer

from .helpers import unique_config, wait_until

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "iterrefine.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="prometheus/promtool not installed (apt-get install prometheus); CI installs it",
)

# Faults make the error, retry and DLQ series exist; 150 ms per call keeps the run a few
# seconds long (run starts in well under a second now), so that Prometheus, scraping every
# second, scrapes it several times while it works.
FAULTY_SIM = SimConfig(latency_ms=150, jitter_ms=50, capacity=64, low_share=0.7, lose_prob=0.5,
                       fault_429=0.05, fault_malformed=0.03, fault_truncated=0.02,
                       fault_looped=0.02,
                       retry_after_s=0.05, seed=11)
MALFORMED_LINES = ["{not json", json.dumps([1, 2]), json.dumps({"prompt": "x"})]


def _records(n: int) -> list[str]:
    return [
        json.dumps({"id": f"live-{i}", "instruction": f"Explain idea number {i} briefly.",
                    "input": "", "output": f"Idea {i} is a small, self-contained thought."})
        for i in range(n)
    ]


def _prometheus_config(tmp_path: Path, target_port: int) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{
            # The name deploy/ dashboards and alerts filter on.
            "job_name": "iterrefine",
            "scrape_interval": "1s",
            "scrape_timeout": "900ms",
            "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
        }],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.asynccontextmanager
async def _prometheus(config: Path, tmp_path: Path) -> AsyncIterator[str]:
    """A Prometheus on a free loopback port; yields its base URL."""
    assert PROMETHEUS is not None
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            PROMETHEUS, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}", "--log.level=warn",
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                assert process.returncode is None, log_path.read_text()
                try:
                    async with http.get(f"{base}/-/ready") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until(ready, timeout_s=30, interval_s=0.1)
        yield base
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _api(http: aiohttp.ClientSession, base: str, path: str, **params: str) -> Any:
    async with http.get(f"{base}/api/v1/{path}", params=params) as response:
        return await response.json()


def _registry_total(metrics: Metrics, family: str) -> float:
    return sum(
        sample.value
        for metric in metrics.registry.collect() if metric.name == family
        for sample in metric.samples if sample.name == f"{family}_total"
    )


@pytest.mark.slow
async def test_every_dashboard_and_alert_expression_runs_on_a_live_scrape(
    broker: str, tmp_path: Path
) -> None:
    """All deploy/ PromQL evaluates in Prometheus, naming only metrics a real run exported."""
    started = time.monotonic()
    assert PROMTOOL is not None
    metrics_port = free_port()
    prometheus_config = _prometheus_config(tmp_path, metrics_port)
    check = await asyncio.to_thread(
        subprocess.run, [PROMTOOL, "check", "config", str(prometheus_config)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr

    source = tmp_path / "input.jsonl"
    source.write_text("\n".join([*_records(40), *MALFORMED_LINES]) + "\n")
    metrics = Metrics()
    async with _prometheus(prometheus_config, tmp_path) as prom, \
            aiohttp.ClientSession() as http, SimServer(FAULTY_SIM, port=0) as sim:
        base = unique_config(retry_base_s=0.02, retry_max_s=0.2)
        # The cache on, as `run` has it, and the paper's selection: the dashboard's cache
        # and selection panels need their series. Four re-asks: near the end of the run an
        # item's re-asks take consecutive fault draws, and three unreadable answers in a row
        # (seen once in ~20 runs with two) would dead-letter a good item by the dice alone.
        config = sim_roles(msgspec.structs.replace(
            base, kafka=msgspec.structs.replace(base.kafka, bootstrap_servers=broker),
            cache=CacheConfig(mode="on", path=str(tmp_path / "cache.sqlite3")),
            pipeline=msgspec.structs.replace(base.pipeline, routing_policy="cluster_quota",
                                             parse_retries=4),
            selection=SelectionConfig(mode="online", k=3, warmup=15, batch_size=10,
                                      refit_window=30),
        ), sim.base_url, FAULTY_SIM)

        async def target_discovered() -> bool:
            # Prometheus hands new targets to its scrapers on a 5 s tick; without this
            # wait a short run can finish before its first scrape.
            targets = await _api(http, prom, "targets")
            return bool(targets["data"]["activeTargets"])

        await wait_until(target_discovered, timeout_s=20, interval_s=0.2)
        # The run serves /metrics on metrics_port itself (`iterrefine run --metrics-port`).
        result = await run_pipeline(
            config,
            RunOptions(input=source, output=tmp_path / "out.jsonl", metrics_port=metrics_port,
                       timeout_s=60),
            metrics=metrics,
        )
        run_finished = time.time()
        assert result.complete
        dead = tmp_path / "out.dlq.jsonl"
        assert result.summary["dlq"] == len(MALFORMED_LINES), dead.read_text()
        # Like a worker that stays up, keep serving the run's registry on the same port
        # until Prometheus has scraped the final counts.
        async with MetricsServer(metrics.registry, metrics_port, host="127.0.0.1"):
            final_items = _registry_total(metrics, "iterrefine_items")

            async def scraped_final_counts() -> bool:
                answer = await _api(http, prom, "query", query="sum(iterrefine_items_total)")
                values = [float(r["value"][1]) for r in answer["data"]["result"]]
                return values == [final_items]

            await wait_until(scraped_final_counts, timeout_s=20, interval_s=0.25)
            # The alert rules were loaded from deploy/ and evaluated every second.
            await asyncio.sleep(1.5)
            rules = await _api(http, prom, "rules")

        # The run's own endpoint was scraped while items were flowing.
        during = await _api(http, prom, "query", query="sum(iterrefine_items_total)",
                            time=f"{run_finished - 0.2:.3f}")
        assert [float(r["value"][1]) > 0 for r in during["data"]["result"]] == [True]

        names = set((await _api(http, prom, "label/__name__/values"))["data"])
        # Every family of iterrefine.observe.metrics has samples in the scrape, faults included.
        assert exported_series_names() <= names, exported_series_names() - names
        statuses = set((await _api(http, prom, "label/status/values"))["data"])
        assert {"ok", "429"} <= statuses

        expressions = [
            *(expand_grafana_variables(e) for e in dashboard_expressions(DASHBOARD)),
            *alert_expressions(ALERTS),
        ]
        assert len(expressions) >= 25
        failures: list[str] = []
        with_data = 0
        for expr in expressions:
            answer = await _api(http, prom, "query", query=expr)
            if answer.get("status") != "success":
                failures.append(f"{expr!r}: {answer.get('errorType')}: {answer.get('error')}")
                continue
            with_data += bool(answer["data"]["result"])
            missing = metric_names(expr) - names
            if missing:
                failures.append(f"{expr!r} names metrics Prometheus never saw: {missing}")
        assert not failures, "\n".join(failures)
        # Most panels show data after one short run (ratios over exhausted-only ranges
        # and alerts that rightly do not fire come back empty).
        assert with_data >= len(expressions) // 2, (with_data, len(expressions))

    loaded = [rule for group in rules["data"]["groups"] for rule in group["rules"]]
    assert len(loaded) == len(alert_expressions(ALERTS))
    for rule in loaded:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    assert time.monotonic() - started < 60
