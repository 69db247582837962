"""Scaling out with `iterrefine worker` processes in one consumer group per stage."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from structlog.testing import capture_logs

from iterrefine.cli.ingest import ingest
from iterrefine.config import Config
from iterrefine.consumers import PIPELINE
from iterrefine.io.ingest import read_records
from iterrefine.item.model import Item
from iterrefine.kafka.clients import make_admin
from iterrefine.kafka.topics import ensure_topics
from iterrefine.runtime import Output, Stage, StageRunner
from iterrefine.runtime.serve import serve_stages
from iterrefine.sim import SimConfig, SimServer

from .helpers import committed_vs_end, unique_config, wait_until
from .pipeline_support import newest, sample_records, start_watcher, wait_for_ids, write_jsonl
from .worker_procs import WorkerProc, stop_all, write_worker_config

pytestmark = pytest.mark.slow  # long integration tests: `pytest -m "not slow"` skips them

SIM = SimConfig(latency_ms=20, jitter_ms=10, capacity=64, low_share=0.7, lose_prob=0.5,
                retry_after_s=0.05)
ALL = set(range(8))


@pytest.fixture
async def sims() -> AsyncIterator[tuple[SimServer, SimServer]]:
    """Two simulators: one for the worker that will be killed, one for everyone else."""
    async with SimServer(SIM, port=0) as victims, SimServer(SIM, port=0) as others:
        yield victims, others


def llm_args(sim: SimServer) -> list[str]:
    return ["--llm-base-url", sim.base_url, "--strong-model", "sim-strong",
            "--backbone-model", "sim-backbone"]


def settled(workers: list[WorkerProc], stage: str) -> bool:
    """Each worker holds some partitions of ``stage``, none twice, all of them in total."""
    held = [w.assignment(stage) for w in workers]
    return all(held) and sum(map(len, held)) == len(ALL) and set().union(*held) == ALL


async def feed(config: Config, broker: str, tmp_path: Path, n: int) -> set[str]:
    async def records():  # type: ignore[no-untyped-def]
        for record in read_records(write_jsonl(tmp_path / "in.jsonl", sample_records(n))):
            yield record

    report = await ingest(config, broker, records())
    return set(report.ids)


async def test_three_refine_workers_survive_one_killed_mid_run(
    kafka: str, sims: tuple[SimServer, SimServer], tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """SIGKILL one of three refine workers: the others take its partitions; all items end
    once. On noida-db the broker is at fault: it never drops a dead member, so its
    partitions are never handed over (checked for 3 session timeouts, then xfail)."""
    broker = kafka
    on_noida = request.node.callspec.params["kafka"] == "noida"
    victims_sim, others_sim = sims
    # noida-db, like Kafka, refuses session timeouts under 6 s.
    config = unique_config(retry_base_s=0.02, retry_max_s=0.5, session_timeout_ms=6000)
    settings = write_worker_config(tmp_path / "worker.toml", config, bootstrap=broker)
    common = ["--config", str(settings)]
    workers = [
        WorkerProc.start("refine-0", tmp_path, "refine", *common, *llm_args(victims_sim)),
        WorkerProc.start("refine-1", tmp_path, "refine", *common, *llm_args(others_sim)),
        WorkerProc.start("refine-2", tmp_path, "refine", *common, *llm_args(others_sim)),
        WorkerProc.start("rest", tmp_path, "score", "route", "review", "align", *common,
                         *llm_args(others_sim)),
    ]
    victim, survivors = workers[0], workers[1:3]
    try:
        await wait_until(lambda: settled(workers[:3], "refine"), timeout_s=60, interval_s=0.2)
        watcher = await start_watcher(config, broker)
        try:
            expected = await feed(config, broker, tmp_path, 200)
            # Kill it while it is busy: LLM calls of its own are in flight right now.
            await wait_until(lambda: victims_sim.stats.total >= 30
                             and victims_sim.stats.concurrency > 0, timeout_s=60, interval_s=0.02)
            lost_partitions = victim.assignment("refine")
            marks = {w.name: w.log_size() for w in survivors}
            victim.kill()
            killed_at = time.monotonic()
            if on_noida:
                await _xfail_unless_taken_over(survivors, lost_partitions, marks, 18.0)
            await wait_for_ids(watcher, expected, timeout_s=120)
            finished_s = time.monotonic() - killed_at
        finally:
            await watcher.stop()
        assert victim.process.returncode == -signal.SIGKILL
        taken_over = set().union(*(w.assignment("refine", after=marks[w.name])
                                   for w in survivors))
        assert lost_partitions and lost_partitions <= taken_over, (lost_partitions, taken_over)
        assert set().union(*(w.assignment("refine") for w in survivors)) == ALL
        for worker in workers[1:]:
            assert worker.terminate() == 0, worker.tail()
    finally:
        stop_all(workers)

    chosen = await newest(config, broker)
    assert set(chosen.by_id) == expected  # every item exactly once in the export
    committed, ends = await committed_vs_end(config, broker, f"{config.kafka.topic_prefix}refine",
                                             "items.refine")
    assert committed == ends  # the survivors finished and committed the victim's backlog
    print(f"\nscaling: {len(expected)} items, victim held {sorted(lost_partitions)}, "
          f"{chosen.duplicates} duplicate terminal records, done {finished_s:.1f} s after kill")


async def _xfail_unless_taken_over(
    survivors: list[WorkerProc], lost: set[int], marks: dict[str, int], within_s: float,
) -> None:
    """Wait for the survivors to take ``lost`` over; xfail, saying why, if they never do."""
    def taken() -> bool:
        held = set().union(*(w.assignment("refine", after=marks[w.name]) for w in survivors))
        return lost <= held

    try:
        await wait_until(taken, timeout_s=within_s, interval_s=0.5)
    except TimeoutError:
        pytest.xfail(f"noida-db never drops a dead group member: partitions {sorted(lost)} of "
                     f"the SIGKILLed worker were not handed over in {within_s:g} s (3 session "
                     "timeouts; Kafka moves them after one), and a new member's join then "
                     "hangs for good")


async def _member_ids(config: Config, broker: str, group: str) -> list[str]:
    admin = make_admin(config.kafka, broker)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    [described] = response.groups
    return sorted(member[0] for member in described[5])


async def _route_stage_members(config: Config, broker: str, *, direct: bool) -> list[str]:
    """Member ids of the route group while one runner (direct, or via serve_stages) is in it."""
    async def route(item: Item) -> list[Output]:
        return [Output("items.refine", item)]

    stage = Stage("route", "items.scored", route, outputs=("items.refine",), waits=True)
    stop = asyncio.Event()
    runners: list[StageRunner] = []
    if direct:
        runners.append(StageRunner(stage, config=config, bootstrap_servers=broker))
        task = asyncio.create_task(runners[0].run(stop))
    else:
        task = asyncio.create_task(serve_stages([stage], config=config, bootstrap_servers=broker,
                                                stop=stop, runners_out=runners))
    try:
        await wait_until(lambda: bool(runners) and runners[0].ready.is_set(), timeout_s=30)
        return await _member_ids(config, broker, runners[0].group_id)
    finally:
        stop.set()
        await task


async def test_group_instance_id_reaches_the_broker_but_is_dropped_on_tansu(broker: str) -> None:
    """The runtime joins with the static id; the worker drops it, warning, on Tansu."""
    config = unique_config()
    config = msgspec.structs.replace(config, kafka=msgspec.structs.replace(
        config.kafka, group_instance_id="route-a"))
    await ensure_topics(config.kafka, broker, PIPELINE.topics())
    # StageRunner hands it to aiokafka, which sends it in JoinGroup: Tansu names the member.
    assert [m.split("-", 2)[:2] for m in await _route_stage_members(
        config, broker, direct=True)] == [["route", "a"]]
    # On Tansu a static group never settles (heartbeats get UNKNOWN_MEMBER_ID every ~6 s),
    # so serve_stages, which every worker goes through, joins dynamically instead.
    with capture_logs() as logs:
        members = await _route_stage_members(config, broker, direct=False)
    assert not any(m.startswith("route-a") for m in members), members
    warnings = [e for e in logs if e["event"] == "static_membership_unsupported"]
    assert warnings and warnings[0]["cluster_id"].startswith("tansu")
