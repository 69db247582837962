"""Run stages in one process until SIGTERM/SIGINT, then drain, commit and exit 0."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence

import structlog

from iterrefine.config import Config
from iterrefine.kafka import make_producer
from iterrefine.metrics import Metrics
from iterrefine.runtime import Stage, StageRunner
from iterrefine.topics import ensure_topics

log = structlog.get_logger("iterrefine.worker")


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT ask for a graceful stop (drain in-flight work, commit)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def serve_stages(
    stages: Sequence[Stage],
    *,
    config: Config,
    bootstrap_servers: str,
    metrics: Metrics | None = None,
    stop: asyncio.Event | None = None,
    runners_out: list[StageRunner] | None = None,
) -> None:
    """Run ``stages`` (sharing one producer) until ``stop`` is set or a runner fails."""
    stop = stop or asyncio.Event()
    metrics = metrics or Metrics()
    await ensure_topics(config.kafka, bootstrap_servers)
    producer = make_producer(config.kafka, bootstrap_servers, linger_ms=config.runtime.linger_ms)
    await producer.start()
    runners = [
        StageRunner(stage, config=config, bootstrap_servers=bootstrap_servers,
                    metrics=metrics, producer=producer)
        for stage in stages
    ]
    if runners_out is not None:
        runners_out.extend(runners)
    tasks = [asyncio.create_task(r.run(stop), name=f"stage-{r.stage.name}") for r in runners]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                log.error("stage_crashed", stage=task.get_name(), error=repr(task.exception()))
    finally:
        stop.set()  # one stage failing stops the others cleanly (they drain and commit)
        await asyncio.gather(*tasks, return_exceptions=True)
        await producer.stop()
    for task in tasks:
        error = task.exception()
        if error is not None:
            raise error
