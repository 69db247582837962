"""Running the real stages in the test process, and reading what the exporter would choose."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Collection

from iterrefine.app.pipeline import serve_pipeline
from iterrefine.config import Config
from iterrefine.consumers import PIPELINE
from iterrefine.io.export import Selection, outcome_of_topic, terminal_of
from iterrefine.io.watch import TerminalWatcher
from iterrefine.kafka.clients import read_to_end
from iterrefine.kafka.topics import TopicNames, ensure_topics
from iterrefine.tasks.prompts import PROMPT_VERSION


@contextlib.asynccontextmanager
async def pipeline(
    config: Config, broker: str, prompt_version: str = PROMPT_VERSION
) -> AsyncIterator[None]:
    """Every stage in the background, stamping ``prompt_version`` (a deployed worker)."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve_pipeline(config, broker, stop=stop, simulated=True,
                                              prompt_version=prompt_version))
    try:
        yield
    finally:
        stop.set()
        await task


async def newest(config: Config, broker: str) -> Selection:
    """What `iterrefine export` chooses: the newest revision per item id."""
    names = TopicNames(config.kafka.topic_prefix)
    selection = Selection()
    records = await read_to_end(config.kafka, broker, names.terminal())
    for record in sorted(records, key=lambda r: r.timestamp):
        selection.offer(terminal_of(record, outcome_of_topic(names, record.topic)))
    return selection


async def start_watcher(config: Config, broker: str) -> TerminalWatcher:
    """A watcher of the terminal topics from their current end (created first if missing)."""
    await ensure_topics(config.kafka, broker, PIPELINE.topics())
    watcher = TerminalWatcher(config.kafka, broker)
    await watcher.start()
    return watcher


async def wait_for_ids(watcher: TerminalWatcher, ids: Collection[str], timeout_s: float) -> None:
    """Until every id reached a terminal topic (assert it did within ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    seen = await watcher.wait_for(ids, should_stop=lambda: time.monotonic() > deadline)
    assert seen == len(ids), f"only {seen} of {len(ids)} items finished in {timeout_s} s"
