"""A graph on a real broker: :func:`run_records` runs records until each is terminal.

It ingests records into a private topic set on a broker (the one given, or a new
embedded one), serves the graph's stages against a :class:`ScriptedLLM`, and returns
what reached each terminal topic, as ``iterrefine run`` would export it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from iterrefine.app.pipeline import load_graph, serve_pipeline
from iterrefine.broker.embedded import EmbeddedBroker
from iterrefine.config import CacheConfig, Config, LLMRoleConfig
from iterrefine.graph.spec import StageGraph
from iterrefine.io.export import Terminal
from iterrefine.io.ingest import Ingestor, RawRecord
from iterrefine.io.watch import TerminalWatcher
from iterrefine.item.model import Item
from iterrefine.kafka.clients import make_producer
from iterrefine.kafka.topics import TopicNames, ensure_topics
from iterrefine.testing._http import ScriptedLLM

#: Group timeouts short enough for tests: Tansu completes a join in about half the
#: session timeout.
_TEST_RUNTIME: dict[str, Any] = {
    "commit_interval_ms": 200,
    "drain_timeout_s": 10.0,
    "session_timeout_ms": 3000,
    "heartbeat_interval_ms": 500,
}


def isolated_config(llm_base_url: str | None = None, *, base: Config | None = None) -> Config:
    """``base`` (default: defaults) on a private topic set, with test timeouts and LLM roles."""
    base = base if base is not None else Config()
    prefix = f"t{uuid.uuid4().hex[:10]}."
    llm = dict(base.llm)
    if llm_base_url is not None:  # the pipeline's two roles at the scripted server
        # sampling as configured: ``[llm_defaults]`` (a preset's temperature included)
        llm |= {role: LLMRoleConfig(base_url=llm_base_url, model=f"sim-{role}", max_retries=2,
                                    temperature=base.llm_defaults.temperature)
                for role in ("strong", "backbone")}
    # No response cache: scripted answers differ from test to test for the same prompt.
    return msgspec.structs.replace(
        base,
        kafka=msgspec.structs.replace(base.kafka, topic_prefix=prefix),
        runtime=msgspec.structs.replace(base.runtime, **_TEST_RUNTIME),
        llm=llm,
        cache=CacheConfig(mode="off"),
    )


@dataclass
class PipelineResult:
    """What reached the terminal topics, newest revision per item id (as export chooses)."""

    terminals: dict[str, Terminal] = field(default_factory=dict)
    #: Ids in the order they were ingested.
    ids: list[str] = field(default_factory=list)

    def _items(self, outcome: str) -> list[Item]:
        return [t.item for i in self.ids if (t := self.terminals.get(i)) is not None
                and t.outcome == outcome and t.item is not None]

    @property
    def curated(self) -> list[Item]:
        return self._items("curated")

    @property
    def rejected(self) -> list[Item]:
        return self._items("rejected")

    @property
    def dead_letters(self) -> list[dict[str, str]]:
        """The dead letters' headers (``reason``, ``stage``, ``message``, …)."""
        return [t.meta for i in self.ids if (t := self.terminals.get(i)) is not None
                and t.outcome == "dlq"]


async def run_records(
    records: Sequence[Mapping[str, Any] | bytes],
    *,
    graph: StageGraph | None = None,
    llm: ScriptedLLM | None = None,
    config: Config | None = None,
    bootstrap: str | None = None,
    timeout_s: float = 60.0,
) -> PipelineResult:
    """Run ``records`` (dicts or JSON bytes) through ``graph`` until each is terminal.

    ``graph`` defaults to the config's (built-in stages plus ``[[stages]]``); ``llm``
    to a :class:`ScriptedLLM` with no script (the simulator's answers); ``bootstrap``
    to a new embedded broker. Raises ``TimeoutError`` if items are still in flight
    after ``timeout_s``.
    """
    async with contextlib.AsyncExitStack() as stack:
        if bootstrap is None:
            broker = await stack.enter_async_context(EmbeddedBroker())
            bootstrap = broker.bootstrap_servers
        if llm is None:
            llm = await stack.enter_async_context(ScriptedLLM())
        config = isolated_config(llm.base_url, base=config)
        graph = graph if graph is not None else load_graph(config)
        await ensure_topics(config.kafka, bootstrap, graph.topics())
        watcher = TerminalWatcher(config.kafka, bootstrap,
                                  fetch_max_wait_ms=config.runtime.fetch_max_wait_ms)
        await watcher.start()
        stack.push_async_callback(watcher.stop)
        stop = asyncio.Event()
        serving = asyncio.create_task(serve_pipeline(config, bootstrap, graph=graph, stop=stop,
                                                     simulated=True))
        try:
            ids = await _ingest(config, bootstrap, records)
            deadline = time.monotonic() + timeout_s
            seen = await watcher.wait_for(ids, should_stop=lambda: serving.done() or (
                time.monotonic() > deadline))
        finally:
            stop.set()
            await serving
        if seen < len(ids):
            raise TimeoutError(f"only {seen} of {len(ids)} items reached a terminal topic "
                               f"within {timeout_s} s")
        return PipelineResult(terminals=dict(watcher.selection.by_id), ids=ids)


async def _ingest(
    config: Config, bootstrap: str, records: Sequence[Mapping[str, Any] | bytes]
) -> list[str]:
    names = TopicNames(config.kafka.topic_prefix)
    producer = make_producer(config.kafka, bootstrap)
    await producer.start()
    try:
        ingestor = Ingestor(producer, names["items.raw"], names["items.dlq"],
                            max_item_bytes=config.runtime.max_item_bytes)
        for line, record in enumerate(records, start=1):
            data = record if isinstance(record, bytes) else json.dumps(dict(record)).encode()
            await ingestor.send(RawRecord(data=data, line=line, origin="test"))
        await ingestor.flush()
        return list(ingestor.report.ids)
    finally:
        await producer.stop()
