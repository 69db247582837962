"""What makes ``iterrefine run`` fast and flat: static partition shares, streaming export."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from iterrefine.app.run import RunOptions, run_pipeline, sim_roles
from iterrefine.config import StaticPartitions
from iterrefine.io.export import ExportPaths, Terminal, load_rows
from iterrefine.io.stream_export import StreamingExport
from iterrefine.item.model import Item
from iterrefine.item.records import item_from_raw
from iterrefine.observe.metrics import Metrics
from iterrefine.runtime import Output, Stage, StageRunner, decode_raw_record
from iterrefine.sim import SimServer

from .helpers import alpaca, committed_vs_end, produce, read_ids, unique_config, wait_until
from .pipeline_support import FAST_SIM, assert_conserved, sample_records, write_jsonl


def _static(count: int, index: int = 0) -> StaticPartitions:
    return StaticPartitions(index=index, count=count)


async def test_static_shares_split_partitions_and_commit_for_resume(broker: str) -> None:
    """Two runners with static shares 0/2 and 1/2: no join, disjoint partitions, all committed."""
    base = unique_config()
    n = 400
    await produce(base, broker, f"{base.kafka.topic_prefix}items.raw",
                  [alpaca(i) for i in range(n)], keys=[f"item-{i}".encode() for i in range(n)])

    def forward(item: Item) -> list[Output]:
        return [Output("items.scored", item)]

    stop = asyncio.Event()
    runners = []
    for index in (0, 1):
        config = msgspec.structs.replace(base, runtime=msgspec.structs.replace(
            base.runtime, static_partitions=_static(2, index)))
        stage = Stage("pass", "items.raw", forward, decode=decode_raw_record,
                      outputs=("items.scored",))
        runners.append(StageRunner(stage, config=config, bootstrap_servers=broker))
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    await wait_until(lambda: sum(r.handled for r in runners) >= n, timeout_s=60)
    stop.set()
    await asyncio.gather(*tasks)

    owned = [{tp.partition for tp in r.committed_offsets()} for r in runners]
    assert owned == [{0, 2, 4, 6}, {1, 3, 5, 7}]
    assert sorted(set(await read_ids(base, broker, "items.scored"))) == sorted(
        f"item-{i}" for i in range(n))
    committed, ends = await committed_vs_end(base, broker, runners[0].group_id, "items.raw")
    assert committed == ends  # a restart would resume from here, not from the beginning


async def test_run_on_its_own_broker_splits_work_between_processes(tmp_path: Path) -> None:
    """No bootstrap: run starts its broker, both processes take a static share, all items once."""
    async with SimServer(FAST_SIM, port=0) as sim:
        base = unique_config(retry_base_s=0.02, retry_max_s=0.2)
        config = sim_roles(msgspec.structs.replace(base, data_dir=str(tmp_path / "data")),
                           sim.base_url, FAST_SIM)
        source = write_jsonl(tmp_path / "input.jsonl", sample_records(60))
        own = Metrics()
        result = await run_pipeline(config, RunOptions(
            input=source, output=tmp_path / "out.jsonl", timeout_s=120, workers=2), metrics=own)
        served = sim.stats.snapshot(series=False)["requests_total"]
    assert_conserved(result, set(result.ingest.ids))
    assert len(result.ingest.ids) == 60 and result.summary["items_in"] == 60
    own_calls = sum(
        sample.value for family in own.registry.collect()
        if family.name == "iterrefine_llm_requests" for sample in family.samples
        if sample.name == "iterrefine_llm_requests_total"
    )
    assert 0 < own_calls < served  # the child served its share of the partitions
    timeline = result.summary["timeline"]  # seconds since the start, phase by phase
    assert set(timeline) == {"imports", "broker", "preflight", "topics", "stages_ready",
                             "ingested", "last_item", "stages_stopped", "broker_stopped",
                             "exported"}
    in_order = ["imports", "broker", "topics", "stages_ready", "last_item", "stages_stopped",
                "broker_stopped", "exported"]
    assert [timeline[p] for p in in_order] == sorted(timeline[p] for p in in_order)
    assert timeline["preflight"] <= timeline["ingested"] <= timeline["last_item"]


@pytest.mark.unit
def test_fetches_on_the_runs_own_broker_are_held_briefly_and_retried_soon() -> None:
    """Tansu holds an empty fetch for its whole max wait, and aiokafka waits a retry
    backoff before a consumer's first fetch: on run's own broker both are short."""
    from iterrefine.app._run_broker import (
        OWN_BROKER_FETCH_MAX_WAIT_MS,
        OWN_BROKER_RETRY_BACKOFF_MS,
        for_own_broker,
    )
    from iterrefine.kafka.clients import client_kwargs

    base = unique_config()
    assert base.runtime.fetch_max_wait_ms > OWN_BROKER_FETCH_MAX_WAIT_MS
    assert base.kafka.retry_backoff_ms > OWN_BROKER_RETRY_BACKOFF_MS
    own = for_own_broker(base, 2)
    assert own.runtime.fetch_max_wait_ms == OWN_BROKER_FETCH_MAX_WAIT_MS
    assert own.runtime.static_partitions == _static(2)
    assert client_kwargs(own.kafka, "x:1")["retry_backoff_ms"] == OWN_BROKER_RETRY_BACKOFF_MS


async def test_a_stopped_runner_does_not_wait_out_its_poll(broker: str) -> None:
    """Stop while the runner waits for records: it leaves at once, not after
    fetch_timeout_ms (it used to add 0.1 s to the end of every run)."""
    base = unique_config()
    config = msgspec.structs.replace(base, runtime=msgspec.structs.replace(
        base.runtime, fetch_timeout_ms=30_000, static_partitions=_static(1)))
    await produce(config, broker, f"{base.kafka.topic_prefix}items.raw", [alpaca(0)])

    def forward(item: Item) -> list[Output]:
        return [Output("items.scored", item)]

    runner = StageRunner(Stage("score", "items.raw", forward, decode=decode_raw_record,
                               outputs=("items.scored",)),
                         config=config, bootstrap_servers=broker)
    stop = asyncio.Event()
    running = asyncio.create_task(runner.run(stop))
    await wait_until(lambda: runner.handled == 1, timeout_s=30)
    await asyncio.sleep(0.2)  # waiting in getmany for more by now
    stop.set()
    started = time.monotonic()
    await asyncio.wait_for(running, timeout=10)
    assert time.monotonic() - started < 5.0  # far below the 30 s poll


async def test_a_fetched_batch_is_started_a_few_records_per_loop_turn(broker: str) -> None:
    """Records start dispatch_batch at a time, with a loop turn between, so the requests
    of the first ones leave before the last ones are even started."""
    base = unique_config()
    config = msgspec.structs.replace(base, runtime=msgspec.structs.replace(
        base.runtime, dispatch_batch=4, static_partitions=_static(1)))
    topic = f"{base.kafka.topic_prefix}items.raw"
    n = 40
    await produce(config, broker, topic, [alpaca(i) for i in range(n)],
                  keys=[b"same-partition"] * n)
    turns = 0
    started_at_turn: list[int] = []

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async def forward(item: Item) -> list[Output]:
        started_at_turn.append(turns)
        await asyncio.sleep(0)
        return [Output("items.scored", item)]

    runner = StageRunner(Stage("score", "items.raw", forward, decode=decode_raw_record,
                               outputs=("items.scored",)),
                         config=config, bootstrap_servers=broker)
    stop = asyncio.Event()
    ticker = asyncio.create_task(count_turns())
    running = asyncio.create_task(runner.run(stop))
    try:
        await wait_until(lambda: len(started_at_turn) == n, timeout_s=30)
    finally:
        stop.set()
        await running
        ticker.cancel()
    per_turn = Counter(started_at_turn)
    assert max(per_turn.values()) <= 4, per_turn
    assert len(per_turn) >= n // 4


def test_the_run_command_imports_neither_the_simulator_nor_other_commands() -> None:
    """`iterrefine run` against an endpoint loads only what it uses (start-up time)."""
    code = (
        "import sys\n"
        "from iterrefine.cli import build_parser\n"
        "build_parser('run').parse_args(['run', 'in.jsonl', '-o', 'out.jsonl'])\n"
        "import iterrefine.app.run, iterrefine.app.pipeline\n"
        "heavy = ['iterrefine.sim.server', 'numpy', 'aiohttp.web', 'iterrefine.cli.view',\n"
        "         'iterrefine.cli.show', 'iterrefine.tools.viewer']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


def _terminal(item_id: str, *, revision: int = 0, ts: int = 1000,
              outcome: str = "curated") -> Terminal:
    raw = f'{{"id": "{item_id}", "instruction": "q", "input": "", "output": "a"}}'.encode()
    item = msgspec.structs.replace(item_from_raw(raw), revision=revision)
    return Terminal(id=item_id, outcome=outcome, revision=revision,  # type: ignore[arg-type]
                    timestamp_ms=ts, item=item, meta={}, raw=b"")


@pytest.mark.unit
def test_streaming_export_writes_each_expected_id_once(tmp_path: Path) -> None:
    """First arrival is written; a same-revision duplicate and a foreign id are not."""
    export = StreamingExport(ExportPaths.beside(tmp_path / "out.jsonl"))
    export.expect("a")
    export.expect("b")
    assert export.offer(_terminal("a")) is True
    assert export.offer(_terminal("a", ts=2000)) is False
    assert export.offer(_terminal("stranger")) is False
    assert not export.complete
    assert export.offer(_terminal("b", outcome="rejected")) is True
    assert export.complete
    assert export.finish() == {"curated": 1, "rejected": 1, "dlq": 0}
    assert [r["id"] for r in load_rows(tmp_path / "out.jsonl")] == ["a"]
    assert [r["id"] for r in load_rows(tmp_path / "out.rejected.jsonl")] == ["b"]
    assert export.duplicates == 1
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.unit
def test_streaming_export_replaces_a_row_when_a_newer_revision_arrives(tmp_path: Path) -> None:
    """A newer revision arriving after its older one was written wins, in its own file."""
    export = StreamingExport(ExportPaths.beside(tmp_path / "out.jsonl"))
    for item_id in ("a", "b"):
        export.expect(item_id)
    export.offer(_terminal("a", revision=0, outcome="rejected"))
    export.offer(_terminal("b"))
    export.offer(_terminal("a", revision=1))
    assert export.finish() == {"curated": 2, "rejected": 0, "dlq": 0}
    rows = {r["id"]: r for r in load_rows(tmp_path / "out.jsonl")}
    assert rows["a"]["item"]["revision"] == 1
    assert load_rows(tmp_path / "out.rejected.jsonl") == []
    summarised = {t.id: t.revision for t in export.terminals()}
    assert summarised == {"a": 1, "b": 0}


@pytest.mark.parametrize("count", [1, 3])
def test_child_configs_take_the_next_static_shares(count: int) -> None:
    """--workers N on a run-owned broker: child i takes share i + 1 of N."""
    from iterrefine.app._extra_workers import ExtraWorkers

    base = unique_config()
    config = msgspec.structs.replace(base, runtime=msgspec.structs.replace(
        base.runtime, static_partitions=_static(count + 1)))
    extras = ExtraWorkers(config, "127.0.0.1:9", count)
    shares = [extras._child_config(i).runtime.static_partitions for i in range(count)]
    assert shares == [_static(count + 1, i + 1) for i in range(count)]


@pytest.mark.unit
def test_plain_http_endpoints_get_a_tls_context_that_trusts_nothing() -> None:
    """http:// roles skip loading the CA bundle (0.13 s each); https:// share one default."""
    from iterrefine.llm._wire import tls_context

    plain = tls_context("http://127.0.0.1:8000/v1")
    assert plain.cert_store_stats()["x509_ca"] == 0
    assert plain.verify_mode.name == "CERT_REQUIRED"  # a redirect to https fails closed
    assert tls_context("https://a.example/v1") is tls_context("https://b.example/v1")


@pytest.mark.unit
def test_streaming_export_writes_rows_in_input_order(tmp_path: Path) -> None:
    """Rows arrive out of order; each file is in input order after finish, late winners
    at their id's place and superseded rows gone."""
    export = StreamingExport(ExportPaths.beside(tmp_path / "out.jsonl"))
    ids = [f"i{n}" for n in range(8)]
    for item_id in ids:
        export.expect(item_id)
    for item_id in ("i5", "i1", "i7", "i0", "i3"):
        export.offer(_terminal(item_id))
    for item_id in ("i6", "i2", "i4"):
        export.offer(_terminal(item_id, outcome="rejected"))
    export.offer(_terminal("i2", revision=1))  # a newer revision: now curated
    assert export.finish() == {"curated": 6, "rejected": 2, "dlq": 0}
    assert [r["id"] for r in load_rows(tmp_path / "out.jsonl")] == [
        "i0", "i1", "i2", "i3", "i5", "i7"]
    assert [r["id"] for r in load_rows(tmp_path / "out.rejected.jsonl")] == ["i4", "i6"]
    assert not list(tmp_path.glob("*.partial*")) and not list(tmp_path.glob("*.tmp"))
    # Without a late winner too: out-of-order arrivals alone are put back in order.
    plain = StreamingExport(ExportPaths.beside(tmp_path / "plain.jsonl"))
    for item_id in ids:
        plain.expect(item_id)
    for item_id in reversed(ids):
        plain.offer(_terminal(item_id))
    plain.finish()
    assert [r["id"] for r in load_rows(tmp_path / "plain.jsonl")] == ids
