"""Run stages in one process until SIGTERM/SIGINT, then drain, commit and exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Sequence

import msgspec
import structlog

from iterrefine.config import Config
from iterrefine.kafka.clients import TANSU_CLUSTER_ID_PREFIX, cluster_id, make_producer
from iterrefine.kafka.topics import ensure_topics
from iterrefine.observe.metrics import Metrics
from iterrefine.runtime import Stage, StageRunner

log = structlog.get_logger("iterrefine.worker")


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT ask for a graceful stop (drain in-flight work, commit); a second
    one exits at once (what is not committed is redone by the next owner)."""
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            log.warning("forced_exit", reason="second stop signal while draining")
            os._exit(130)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)


async def _static_membership_checked(config: Config, bootstrap_servers: str) -> Config:
    """``config`` without ``group_instance_id`` if the broker is the embedded Tansu.

    With a static member id, Tansu answers a heartbeat every few seconds with
    UNKNOWN_MEMBER_ID, so the group rebalances forever and the stage barely works.
    Static membership only saves rebalances; dynamic membership is correct too.
    """
    instance = config.kafka.group_instance_id
    if instance is None:
        return config
    found = await cluster_id(config.kafka, bootstrap_servers)
    if found is None or not found.startswith(TANSU_CLUSTER_ID_PREFIX):
        return config
    log.warning("static_membership_unsupported", group_instance_id=instance, cluster_id=found,
                action="joining as a dynamic member",
                fix="drop --group-instance-id when using the embedded Tansu broker")
    return msgspec.structs.replace(
        config, kafka=msgspec.structs.replace(config.kafka, group_instance_id=None))


async def _when_ready(runners: Sequence[StageRunner], on_ready: Callable[[], None]) -> None:
    await asyncio.gather(*(runner.ready.wait() for runner in runners))
    on_ready()


async def _when_drained(runners: Sequence[StageRunner], on_drained: Callable[[], None]) -> None:
    await asyncio.gather(*(runner.drained.wait() for runner in runners))
    on_drained()


async def serve_stages(
    stages: Sequence[Stage],
    *,
    config: Config,
    bootstrap_servers: str,
    metrics: Metrics | None = None,
    stop: asyncio.Event | None = None,
    runners_out: list[StageRunner] | None = None,
    on_ready: Callable[[], None] | None = None,
    topics_ready: bool = False,
    leave: asyncio.Event | None = None,
    on_drained: Callable[[], None] | None = None,
) -> None:
    """Run ``stages`` (sharing one producer) until ``stop`` is set or a runner fails.

    ``on_ready`` is called once every stage has its first partitions. ``topics_ready``:
    the caller created the stages' topics already. ``leave``: after the stop, the stages
    commit and stay in their groups until it is set (:meth:`StageRunner.run`);
    ``on_drained`` is called once all of them have committed.
    """
    stop = stop or asyncio.Event()
    metrics = metrics or Metrics()
    if not topics_ready:
        await ensure_topics(config.kafka, bootstrap_servers,
                            [t for stage in stages for t in (stage.input_topic, *stage.outputs)])
    config = await _static_membership_checked(config, bootstrap_servers)
    producer = make_producer(config.kafka, bootstrap_servers, linger_ms=config.runtime.linger_ms)
    await producer.start()
    runners = [
        StageRunner(stage, config=config, bootstrap_servers=bootstrap_servers,
                    metrics=metrics, producer=producer)
        for stage in stages
    ]
    if runners_out is not None:
        runners_out.extend(runners)
    tasks = [asyncio.create_task(r.run(stop, leave), name=f"stage-{r.stage.name}")
             for r in runners]
    announcing = [asyncio.create_task(_when_ready(runners, on_ready))] if on_ready else []
    if on_drained is not None:
        announcing.append(asyncio.create_task(_when_drained(runners, on_drained)))
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                log.error("stage_crashed", stage=task.get_name(), error=repr(task.exception()))
                if leave is not None:
                    leave.set()  # a crash must not keep the others waiting to leave
    finally:
        for waiting in announcing:
            waiting.cancel()
        stop.set()  # one stage failing stops the others cleanly (they drain and commit)
        await asyncio.gather(*tasks, return_exceptions=True)
        await producer.stop()
    for task in tasks:
        error = task.exception()
        if error is not None:
            raise error
