"""`iterrefine status`: lag from the broker's offsets, live numbers from workers' /metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import structlog
from prometheus_client import generate_latest

from iterrefine.app import exit_codes
from iterrefine.app.run import RunOptions, RunResult, run_pipeline, sim_roles
from iterrefine.cli import main
from iterrefine.config import Config
from iterrefine.consumers import PIPELINE
from iterrefine.io.export import load_rows
from iterrefine.kafka.clients import make_producer, read_to_end
from iterrefine.kafka.topics import TopicNames, ensure_topics
from iterrefine.observe.http import MetricsServer
from iterrefine.observe.metrics import Metrics
from iterrefine.processes import free_port
from iterrefine.sim import SimConfig, SimServer
from iterrefine.tools.status import metrics_url, pipeline_status, rounds_distribution

from .helpers import unique_config, wait_until

FAST_SIM = SimConfig(latency_ms=3, capacity=64, low_share=0.6, lose_prob=0.5, seed=3)
# Slow enough that the run is still going while status scrapes it twice.
SLOW_SIM = SimConfig(latency_ms=60, jitter_ms=20, capacity=4, low_share=0.6, lose_prob=0.5,
                     seed=4)


def _write_input(path: Path, n: int, malformed: int = 0) -> Path:
    lines = [
        json.dumps({"id": f"st-{i}", "instruction": f"List {i} prime numbers.", "input": "",
                    "output": ", ".join(str(p) for p in (2, 3, 5, 7, 11)[: 1 + i % 5])})
        for i in range(n)
    ]
    lines += [f"{{broken {j}" for j in range(malformed)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(broker: str, sim: SimServer, sim_config: SimConfig) -> Config:
    base = unique_config(retry_base_s=0.02, retry_max_s=0.2)
    return sim_roles(msgspec.structs.replace(
        base, kafka=msgspec.structs.replace(base.kafka, bootstrap_servers=broker),
    ), sim.base_url, sim_config)


class FinishedRun(msgspec.Struct):
    config: Config
    result: RunResult


@pytest.fixture(scope="module")
async def finished(broker: str, tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """A completed run of 20 items and 2 undecodable lines; its stages have stopped."""
    tmp_path = tmp_path_factory.mktemp("finished_run")
    async with SimServer(FAST_SIM, port=0) as sim:
        config = _config(broker, sim, FAST_SIM)
        result = await run_pipeline(config, RunOptions(
            input=_write_input(tmp_path / "in.jsonl", 20, malformed=2),
            output=tmp_path / "out.jsonl", timeout_s=60))
    assert result.complete
    return FinishedRun(config=config, result=result)


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.unit
@pytest.mark.parametrize(("address", "url"), [
    ("127.0.0.1:9100", "http://127.0.0.1:9100/metrics"),
    ("http://score:9100", "http://score:9100/metrics"),
    ("https://w.example/custom/metrics", "https://w.example/custom/metrics"),
])
def test_metrics_addresses_become_urls(address: str, url: str) -> None:
    """host:port and bare URLs get http:// and /metrics; full URLs are kept."""
    assert metrics_url(address) == url


@pytest.mark.unit
def test_workers_cache_lookups_are_read_and_summed_over_endpoints() -> None:
    """iterrefine_llm_cache_total of several workers: hits and misses per role, summed."""
    from iterrefine.tools.status import parse_worker_metrics

    one, two = Metrics(), Metrics()
    one.llm_cache_total.labels(role="strong", result="hit").inc(3)
    one.llm_cache_total.labels(role="strong", result="miss").inc(1)
    two.llm_cache_total.labels(role="strong", result="hit").inc(2)
    two.llm_cache_total.labels(role="backbone", result="miss").inc(4)
    texts = [generate_latest(m.registry).decode() for m in (one, two)]
    total = parse_worker_metrics(texts[0]).plus(parse_worker_metrics(texts[1]))
    assert total.cache == {"strong": {"hit": 5.0, "miss": 1.0},
                           "backbone": {"miss": 4.0}}


@pytest.mark.unit
def test_rounds_distribution_from_cumulative_buckets() -> None:
    """Cumulative le buckets become items per round count; wide buckets get a range label."""
    cumulative = {1.0: 4, 2.0: 6, 3.0: 6, 6.0: 6, 8.0: 7, 10.0: 7, float("inf"): 9}
    assert rounds_distribution(cumulative) == {"1": 4, "2": 2, "7-8": 1, ">10": 2}


async def test_finished_run_has_no_lag_and_counts_terminal_topics(
    broker: str, finished: FinishedRun
) -> None:
    """After a run every stage's group committed its input's true end; terminal counts match."""
    config, result = finished.config, finished.result
    status = await pipeline_status(config.kafka, broker, stage_inputs=PIPELINE.inputs())
    by_stage = {s.stage: s for s in status.stages}
    assert list(by_stage) == ["score", "route", "refine", "review", "align"]
    assert by_stage["score"].end == 22  # 20 items + 2 undecodable lines, all on items.raw
    for stage in status.stages:
        assert stage.group == f"{config.kafka.topic_prefix}{stage.stage}"
        assert stage.lag == 0, stage
        assert stage.committed == stage.end
        assert stage.inflight is None and stage.items_per_s is None  # no endpoints given
    assert by_stage["refine"].end > 0 and by_stage["align"].end > 0
    summary = result.summary
    assert summary["duplicates_removed"] == 0
    assert status.terminal == {"items.curated": summary["curated"],
                               "items.rejected": summary["rejected"], "items.dlq": 2}
    assert status.rounds is None


async def test_status_cli_prints_table_and_json(
    broker: str, finished: FinishedRun, capsys: pytest.CaptureFixture[str],
    _restore_logging: None,
) -> None:
    """`iterrefine status` prints the lag table, --json the same data; dead endpoints exit 1."""
    config, result = finished.config, finished.result
    common = ["status", "--bootstrap", broker, "--topic-prefix", config.kafka.topic_prefix]
    capsys.readouterr()  # the run's own log lines
    assert await asyncio.to_thread(main, [*common, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["lag"] for s in data["stages"]] == [0] * 5
    assert data["terminal"]["items.curated"] == result.summary["curated"]

    assert await asyncio.to_thread(main, common) == 0
    table = capsys.readouterr().out
    for word in ("score", "route", "refine", "review", "align", "lag",
                 "items: 22 of 22 ingested finished"):
        assert word in table

    dead = f"127.0.0.1:{free_port()}"
    code = await asyncio.to_thread(main, [*common, "--metrics", dead, "--interval-s", "0.1"])
    captured = capsys.readouterr()
    assert code == 1
    assert f"cannot scrape http://{dead}/metrics" in captured.err


@pytest.mark.slow
async def test_live_metrics_give_rate_inflight_and_rounds(broker: str, tmp_path: Path) -> None:
    """While a run works, status shows items/s and in-flight; after it, the rounds it did."""
    port = free_port()
    metrics = Metrics()
    async with SimServer(SLOW_SIM, port=0) as sim:
        config = _config(broker, sim, SLOW_SIM)
        run = asyncio.create_task(run_pipeline(
            config,
            RunOptions(input=_write_input(tmp_path / "in.jsonl", 30),
                       output=tmp_path / "out.jsonl", metrics_port=port, timeout_s=60),
            metrics=metrics,
        ))
        await wait_until(lambda: (metrics.registry.get_sample_value(
            "iterrefine_items_total", {"stage": "score", "outcome": "scored"}) or 0) >= 3,
            timeout_s=30)
        live = await pipeline_status(config.kafka, broker, stage_inputs=PIPELINE.inputs(),
                                     metrics_urls=[f"127.0.0.1:{port}"],
                                     interval_s=0.5)
        result = await run
    assert result.complete
    assert live.metrics_errors == []
    assert live.rate_window_s is not None and live.rate_window_s >= 0.5
    assert all(s.inflight is not None for s in live.stages)
    assert sum(s.items_per_s or 0 for s in live.stages) > 0
    assert sum(s.lag for s in live.stages) > 0 or sum(s.inflight or 0 for s in live.stages) > 0

    # A worker keeps serving after its work is done: the final rounds distribution.
    async with MetricsServer(metrics.registry, 0, host="127.0.0.1") as server:
        after = await pipeline_status(config.kafka, broker, stage_inputs=PIPELINE.inputs(),
                                      metrics_urls=[f"127.0.0.1:{server.port}"],
                                      interval_s=0.1)
    assert after.rounds is not None
    assert {k: v for k, v in after.rounds.items() if v} == {
        k: v for k, v in result.summary["rounds"].items() if v}
    assert all(s.lag == 0 and s.inflight == 0 and s.items_per_s == 0 for s in after.stages)


async def _copy_with_extras(finished: FinishedRun, broker: str) -> Config:
    """The finished run's records under a new prefix, plus what a SIGKILL and a slow stage
    leave: one curated record twice, two ingested ids still in the pipeline."""
    source = finished.config
    config = unique_config()
    names, old = TopicNames(config.kafka.topic_prefix), TopicNames(source.kafka.topic_prefix)
    records = await read_to_end(source.kafka, broker,
                                [old["items.raw"], *old.terminal()])
    curated = [r for r in records if old.logical(r.topic) == "items.curated"]
    copies = [*records, curated[0]]  # redelivered after a kill: the same revision again
    await ensure_topics(config.kafka, broker, PIPELINE.topics())
    producer = make_producer(config.kafka, broker)
    await producer.start()
    try:
        for record in copies:
            await producer.send_and_wait(names[old.logical(record.topic)], record.value,
                                         key=record.key, headers=list(record.headers or ()))
        # Two items still in the pipeline; one of them got as far as refinement.
        for stuck in (b"stuck-0", b"stuck-1"):
            await producer.send_and_wait(names["items.raw"], b"{}", key=stuck)
        await producer.send_and_wait(names["items.refine"], b"{}", key=b"stuck-1")
    finally:
        await producer.stop()
    return config


async def test_counts_are_items_with_duplicates_apart_and_missing_ones_located(
    broker: str, finished: FinishedRun, capsys: pytest.CaptureFixture[str],
    _restore_logging: None, tmp_path: Path,
) -> None:
    """A repeated terminal record is not an item; unfinished ids are named by where they
    are; export writes what finished and exits 3 saying how many are missing and where."""
    config = await _copy_with_extras(finished, broker)
    summary = finished.result.summary
    status = await pipeline_status(config.kafka, broker, stage_inputs=PIPELINE.inputs())
    items = status.items
    assert items is not None
    assert (items.ingested, items.finished, items.missing) == (24, 22, 2)
    assert items.items == {"items.curated": summary["curated"],
                           "items.rejected": summary["rejected"], "items.dlq": 2}
    assert status.terminal["items.curated"] == summary["curated"] + 1  # records: one repeated
    assert (items.duplicates, items.superseded) == (1, 0)
    assert items.missing_where == {"items.raw": 1, "items.refine": 1}
    assert items.missing_examples == ["stuck-0", "stuck-1"]

    out = tmp_path / "out.jsonl"
    common = ["--bootstrap", broker, "--topic-prefix", config.kafka.topic_prefix]
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["export", "-o", str(out), *common])
    captured = capsys.readouterr()
    assert code == exit_codes.EXPORT_INCOMPLETE == 3
    assert "items: 22 of 24 ingested finished; left out 1 repeated records" in captured.out
    assert ("2 of 24 ingested items have not reached a terminal topic yet (1 in items.raw, "
            "1 in items.refine; e.g. stuck-0, stuck-1)") in captured.err
    assert len(load_rows(out)) == summary["curated"]  # each item once
    code = await asyncio.to_thread(main, ["export", "-o", str(out), "--bootstrap", broker,
                                          "--topic-prefix", finished.config.kafka.topic_prefix])
    assert code == 0, capsys.readouterr().err
