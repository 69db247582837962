"""A test kit for pipeline stages: scripted LLM answers and the real embedded broker.

Test a stage (or a whole graph) the way it runs in production, in a few lines::

    from iterrefine.consumers import PIPELINE
    from iterrefine.testing import ScriptedLLM, run_records

    async def test_my_stage() -> None:
        graph = PIPELINE.inserted(MY_SPEC, before="route")
        async with ScriptedLLM({"score": HIGH_SCORE_ANSWER}) as llm:
            result = await run_records([{"instruction": "Q?", "output": "A."}],
                                       graph=graph, llm=llm)
        assert result.curated[0].status == "high"

:class:`ScriptedLLM` is an OpenAI-compatible server on 127.0.0.1: a task in its
script gets the scripted answer (a string, or a function of the request's data
block), every other task the simulator's answer. :func:`run_records` ingests
records into a private topic set on a broker (the one given, or a new embedded
one), serves the graph's stages, and returns what reached each terminal topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

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
from iterrefine.lifecycle import AsyncService
from iterrefine.sim import SimConfig
from iterrefine.sim.answers import render, request_schema
from iterrefine.sim.prompt import CHAT_TASK, PromptError, parse_prompt
from iterrefine.sim.server import OWNER

__all__ = ["Answer", "PipelineResult", "ScriptedLLM", "isolated_config", "run_records"]

#: A scripted answer: fixed text, or text made from the request's data block.
Answer = str | Callable[[dict[str, Any]], str]

#: Group timeouts short enough for tests: Tansu completes a join in about half the
#: session timeout.
_TEST_RUNTIME: dict[str, Any] = {
    "commit_interval_ms": 200,
    "drain_timeout_s": 10.0,
    "session_timeout_ms": 3000,
    "heartbeat_interval_ms": 500,
}


class ScriptedLLM(AsyncService):
    """``async with ScriptedLLM({"score": "..."}) as llm:`` serves ``llm.base_url``.

    ``requests`` records each task request as ``(task, data)``, so a test can check
    what its stage asked (a client's untagged structured-output probe is answered
    like the simulator does, and not recorded).
    """

    def __init__(self, answers: Mapping[str, Answer] | None = None,
                 sim: SimConfig | None = None) -> None:
        self.answers = dict(answers or {})
        self._sim = sim if sim is not None else SimConfig()
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))  # port 0: a free one, known before serving
        self._port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("ScriptedLLM not started")
        return f"http://127.0.0.1:{self._port}/v1"

    async def _models(self, request: web.Request) -> web.Response:
        # Owned by the simulator: output made with scripted answers is marked simulated.
        models = [{"id": m, "object": "model", "owned_by": OWNER} for m in self._sim.models]
        return web.json_response({"object": "list", "data": models})

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        messages = body.get("messages", [])
        system = next((m["content"] for m in messages if m.get("role") == "system"), "")
        user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        try:
            prompt = parse_prompt(system, user)
        except PromptError as exc:
            return web.json_response({"error": {"message": str(exc)}}, status=400)
        if prompt.task != CHAT_TASK:  # not a client's untagged structured-output probe
            self.requests.append((prompt.task, prompt.data))
        scripted = self.answers.get(prompt.task)
        if scripted is None:
            response_format = body.get("response_format")
            structured = (response_format or {}).get("type") in ("json_schema", "json_object")
            content = render(prompt, self._sim, structured=structured,
                             schema=request_schema(response_format))
        else:
            content = scripted(prompt.data) if callable(scripted) else scripted
        return web.json_response({
            "id": f"chatcmpl-scripted-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model", "scripted")),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })


def isolated_config(llm_base_url: str | None = None, *, base: Config | None = None) -> Config:
    """``base`` (default: defaults) on a private topic set, with test timeouts and LLM roles."""
    base = base if base is not None else Config()
    prefix = f"t{uuid.uuid4().hex[:10]}."
    llm = dict(base.llm)
    if llm_base_url is not None:  # the pipeline's two roles at the scripted server
        llm |= {role: LLMRoleConfig(base_url=llm_base_url, model=f"sim-{role}", max_retries=2)
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
