""":class:`StageKit`: call one stage's handler in-process, with scripted LLM answers.

No broker and no server: the stage's handler is built on a real
:class:`~iterrefine.graph.context.PipelineContext` whose LLM roles are the real
:class:`~iterrefine.llm.LLMClient` (the ``openai`` client, retries, re-asks, parsers),
sending over an in-process transport to a :class:`~iterrefine.testing._script.Script`.
A stage test then takes milliseconds; :func:`~iterrefine.testing.run_records` is the
same check on a real broker, for the whole graph.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx2
import msgspec

from iterrefine.app.pipeline import load_graph, pipeline_context
from iterrefine.config import Config, LLMRoleConfig, PipelineConfig, StructuredOutput
from iterrefine.consumers import PIPELINE
from iterrefine.graph.context import PipelineContext
from iterrefine.graph.spec import StageSpec
from iterrefine.item.model import Item, Original
from iterrefine.item.records import new_item
from iterrefine.lifecycle import AsyncService
from iterrefine.llm import LLMClient
from iterrefine.observe.metrics import Metrics
from iterrefine.runtime.stage import Handler, InlineHandler, Output, Stage
from iterrefine.sim import SimConfig
from iterrefine.testing._script import Answer, Script, ScriptedRequest

#: The pipeline's two LLM roles, which the kit always provides.
_ROLES = ("strong", "backbone")


def make_item(instruction: str = "Say hello", input: str = "", output: str = "Hello!",
              **changes: Any) -> Item:
    """A fresh item as ingest makes it from these fields, with ``changes`` applied."""
    item = new_item(Original(instruction=instruction, input=input, output=output))
    return item.with_changes(**changes) if changes else item


class StageKit(AsyncService):
    """``async with StageKit({"score": HIGH}) as kit: outputs = await kit.handle("score", item)``.

    ``answers`` scripts what the models say per task (text, a
    :class:`~iterrefine.testing.Reply`, or a function of the
    :class:`~iterrefine.testing.ScriptedRequest`); unscripted tasks get the simulator's
    answer. ``config`` gives the pipeline settings (``pipeline=`` overrides single keys)
    and the user stages of ``[[stages]]``; ``options`` is a stage's ``ctx.options``.
    ``requests`` lists what the stages asked, in order.
    """

    def __init__(
        self,
        answers: Mapping[str, Answer] | None = None,
        *,
        config: Config | None = None,
        pipeline: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        structured_output: StructuredOutput = "off",
        sim: SimConfig | None = None,
    ) -> None:
        base = config if config is not None else Config()
        if pipeline:
            base = msgspec.structs.replace(base, pipeline=msgspec.convert(
                {**msgspec.to_builtins(base.pipeline), **pipeline}, PipelineConfig))
        self.config = base
        self.script = Script(answers, sim)
        self.metrics = Metrics()
        self._options = dict(options or {})
        self._structured_output = structured_output
        self._stack = contextlib.AsyncExitStack()
        self._ctx: PipelineContext | None = None
        self._stages: dict[str, Stage] = {}

    @property
    def requests(self) -> list[ScriptedRequest]:
        return self.script.requests

    @property
    def ctx(self) -> PipelineContext:
        """The context the stages are built on (LLM roles, pipeline config, metrics)."""
        if self._ctx is None:
            raise RuntimeError("StageKit not started: use `async with StageKit(...) as kit`")
        return self._ctx

    async def start(self) -> None:
        http = await self._stack.enter_async_context(
            httpx2.AsyncClient(transport=httpx2.MockTransport(self._transport)))
        roles: dict[str, LLMClient] = {}
        for role in _ROLES:
            settings = self.config.llm.get(role) or LLMRoleConfig(
                base_url="http://stage-kit.invalid/v1", model=f"sim-{role}")
            settings = msgspec.structs.replace(
                settings, max_retries=0, structured_output=self._structured_output)
            roles[role] = await self._stack.enter_async_context(
                LLMClient(role, settings, http_client=http, metrics=self.metrics))
        config = msgspec.structs.replace(self.config, llm={
            role: client.config for role, client in roles.items()})
        self._ctx = pipeline_context(config, roles, self.metrics, simulated=True)

    async def aclose(self) -> None:
        await self._stack.aclose()

    def stage(self, stage: str | StageSpec) -> Stage:
        """The runnable stage: a built-in or ``[[stages]]`` one by name, or a spec of yours.

        Built once per kit, so a stateful handler (a filter remembering what it saw)
        keeps its state from one :meth:`handle` to the next.
        """
        spec = stage if isinstance(stage, StageSpec) else self._graph_spec(stage)
        if spec.name not in self._stages:
            if self._options:
                spec = spec.with_options(self._options)
            # A spec placed by ``before`` says nowhere where it reads; here that is moot.
            if spec.input_topic is None:
                spec = spec.reading("items.raw")
            self._stages[spec.name] = spec.build(self.ctx)
        return self._stages[spec.name]

    async def handle(self, stage: str | StageSpec, item: Item) -> list[Output]:
        """What the stage outputs for ``item``, checked against its declared topics.

        Exceptions propagate as the runtime would see them (a retriable
        :class:`~iterrefine.errors.TransientError`, an unreadable answer, ...).
        """
        runnable = self.stage(stage)
        if runnable.waits:
            waiting: Handler = runnable.handler  # type: ignore[assignment]  # waits=True
            result: object = await waiting(item)
        else:
            inline: InlineHandler = runnable.handler  # type: ignore[assignment]  # waits=False
            result = inline(item)
        return list(runnable.checked(result))

    def _graph_spec(self, name: str) -> StageSpec:
        graph = load_graph(self.config) if self.config.stages else PIPELINE
        return graph[name]

    def _transport(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "GET" and request.url.path.endswith("/models"):
            return httpx2.Response(200, json=self.script.models())
        status, body = self.script.respond(json.loads(request.content))
        return httpx2.Response(status, json=body)


def only(outputs: Sequence[Output]) -> Output:
    """The one output of a handler call (fails the test if there are none or several)."""
    if len(outputs) != 1:
        raise AssertionError(f"expected exactly one output, got {len(outputs)}: {outputs!r}")
    return outputs[0]
