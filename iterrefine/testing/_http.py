""":class:`ScriptedLLM`: a :class:`~iterrefine.testing._script.Script` served over HTTP."""

from __future__ import annotations

import socket
from collections.abc import Mapping

from aiohttp import web

from iterrefine.lifecycle import AsyncService
from iterrefine.sim import SimConfig
from iterrefine.testing._script import Answer, Script, ScriptedRequest


class ScriptedLLM(AsyncService):
    """``async with ScriptedLLM({"score": "..."}) as llm:`` serves ``llm.base_url``.

    An OpenAI-compatible server on 127.0.0.1: a task in the script gets the scripted
    answer, every other task the simulator's. ``requests`` records each task request
    (:class:`~iterrefine.testing.ScriptedRequest`), so a test can check what its
    stages asked.
    """

    def __init__(self, answers: Mapping[str, Answer] | None = None,
                 sim: SimConfig | None = None) -> None:
        self.script = Script(answers, sim)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def requests(self) -> list[ScriptedRequest]:
        return self.script.requests

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
        return web.json_response(self.script.models())

    async def _chat(self, request: web.Request) -> web.Response:
        status, body = self.script.respond(await request.json())
        return web.json_response(body, status=status)
