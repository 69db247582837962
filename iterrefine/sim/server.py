"""An OpenAI-compatible LLM simulator server (aiohttp), for tests, demos and benchmarks.

It is an instrument, never a model: every response names a ``sim-…`` model,
``/v1/models`` lists models owned by ``iterrefine-simulator``, and every response
carries an ``x-iterrefine-simulator`` header.

Endpoints::

    POST /v1/chat/completions   answers per docs/llm-contract.md (non-streaming)
    POST /v1/embeddings         planted-cluster vectors (iterrefine.sim._vectors)
    POST /v1/completions        echoed prompt logprobs for difficulty (iterrefine.sim._vectors)
    GET  /v1/models[/{id}]      the simulated models
    GET  /stats                 counters, busy time, concurrency series (?series=0 omits it)
    POST /stats/reset           zero the counters, the series and the request log
    GET  /requests              the request log (?limit=N&task=refine)
    GET  /health

Serving model: at most ``capacity`` requests are served at once and the rest wait in
a FIFO queue; a request's latency starts when it is served, as in an inference server
with a maximum batch. Faults are drawn per request from a seeded random stream:
429 (answered at once, with ``Retry-After``), 500 (after the service time), hang
(sleeps ``hang_s`` before queueing, holding no slot, like a lost connection) and
malformed (an answer the parser cannot read).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
import warnings
from typing import Any

import msgspec
from aiohttp import web

from iterrefine.config.extras import has_extra, missing_extra
from iterrefine.lifecycle import AsyncService
from iterrefine.sim._http import (
    OWNER,
    ChatRequest,
    bind,
    chat_decoder,
    completion_body,
    completions_decoder,
    embeddings_decoder,
    error,
    json_response,
    sim_model_name,
    text_of,
)
from iterrefine.sim._stats import RequestLog, SimStats
from iterrefine.sim._vectors import completion_text, echo_logprobs, embedding_answer
from iterrefine.sim.answers import render, render_malformed, request_schema
from iterrefine.sim.config import SimConfig
from iterrefine.sim.prompt import PromptError, SimPrompt, parse_prompt

__all__ = ["LOOP_TAIL", "OWNER", "SimServer", "sim_model_name"]

#: What a looping reply (``fault_looped``) writes after its answer until the limit: a run
#: of blank lines, the commonest loop of SmolLM2 asked for a short answer.
LOOP_TAIL = "\n" * 400


class SimServer(AsyncService):
    """The simulator with an explicit lifecycle; ``port=0`` picks a free port.

    ::

        async with SimServer(SimConfig(latency_ms=50), port=0) as sim:
            client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sim")
    """

    def __init__(
        self, config: SimConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config if config is not None else SimConfig()
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self.stats = SimStats(capacity=self.config.capacity, series_size=self.config.series_size)
        self.requests = RequestLog(self.config.request_log_size)
        self._fault_rng = random.Random(self.config.seed)
        self._latency_rng = random.Random(self.config.seed + 1)
        self._next_id = 0
        self._created = int(time.time())
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._closing: asyncio.Event | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("SimServer already started")
        self._closing = asyncio.Event()
        if self.config.capacity > 0:
            self._slots = asyncio.Semaphore(self.config.capacity)
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        sock = bind(self.host, self._requested_port)
        try:
            await web.SockSite(runner, sock, backlog=1024).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._port = sock.getsockname()[1]
        self._runner = runner
        self.stats.reset()
        self._sampler = asyncio.create_task(self._sample_forever(), name="sim-llm-sampler")

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._closing is not None:
            self._closing.set()
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        await runner.cleanup()

    def __del__(self) -> None:
        if self._runner is not None:
            warnings.warn(f"Unclosed {self!r}", ResourceWarning, stacklevel=1, source=self)

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not started"
        return f"<SimServer {where}>"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("SimServer not started")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What to give ``openai.AsyncOpenAI(base_url=...)``."""
        return f"{self.url}/v1"

    def reset(self) -> None:
        """Zero the counters and the series, and clear the request log."""
        self.stats.reset()
        self.requests.clear()

    # -- app -------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._auth])
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model}", self._model)
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/stats/reset", self._reset)
        app.router.add_get("/requests", self._requests)
        app.router.add_get("/health", self._health)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """With ``api_key`` set, the /v1 API wants exactly that bearer key (like OpenAI)."""
        key = self.config.api_key
        if (key is not None and request.path.startswith("/v1/")
                and request.headers.get("Authorization") != f"Bearer {key}"):
            self.stats.request("unauthorized")
            self.stats.finished(401)
            return error(401, "sim: incorrect API key provided", "invalid_api_key")
        response: web.StreamResponse = await handler(request)
        return response

    async def _sample_forever(self) -> None:
        interval_s = self.config.sample_interval_ms / 1000.0
        while True:
            await asyncio.sleep(interval_s)
            self.stats.sample()

    async def _health(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok", "simulator": True})

    def _model_card(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self._created, "owned_by": OWNER}

    async def _models(self, request: web.Request) -> web.Response:
        cards = [self._model_card(m) for m in self.config.models]
        return json_response({"object": "list", "data": cards})

    async def _model(self, request: web.Request) -> web.Response:
        return json_response(self._model_card(sim_model_name(request.match_info["model"])))

    async def _stats(self, request: web.Request) -> web.Response:
        series = request.query.get("series", "1") not in ("0", "false", "no")
        return json_response(self.stats.snapshot(series=series))

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return json_response({"status": "reset"})

    async def _requests(self, request: web.Request) -> web.Response:
        limit_s = request.query.get("limit")
        if limit_s is not None and not limit_s.isdigit():
            return error(400, "limit must be a non-negative integer", "invalid_request_error")
        limit = int(limit_s) if limit_s is not None else None
        entries = self.requests.recent(limit=limit, task=request.query.get("task"))
        return json_response({"size": self.requests.size, "requests": entries})

    # -- chat completions ------------------------------------------------------------

    def _draw_fault(self) -> str | None:
        cfg = self.config
        if cfg.fault_total <= 0.0:
            return None
        u = self._fault_rng.random()
        for kind, rate in (
            ("429", cfg.fault_429),
            ("500", cfg.fault_500),
            ("hang", cfg.fault_hang),
            ("malformed", cfg.fault_malformed),
            ("truncated", cfg.fault_truncated),
            ("looped", cfg.fault_looped),
        ):
            if u < rate:
                return kind
            u -= rate
        return None

    def _service_time_s(self) -> float:
        cfg = self.config
        jitter = self._latency_rng.uniform(-cfg.jitter_ms, cfg.jitter_ms) if cfg.jitter_ms else 0.0
        return max(0.0, cfg.latency_ms + jitter) / 1000.0

    async def _chat_completions(self, request: web.Request) -> web.Response:
        try:
            body = chat_decoder.decode(await request.read())
        except msgspec.MsgspecError as exc:
            self.stats.finished(400)
            return error(400, f"invalid request body: {exc}", "invalid_request_error")
        if body.stream:
            self.stats.finished(400)
            return error(400, "the simulator does not stream", "invalid_request_error")
        if self.config.strict_models and body.model not in self.config.models:
            self.stats.finished(404)
            return error(404, f"sim: the model `{body.model}` does not exist",
                         "model_not_found")
        system = next((text_of(m) for m in body.messages if m.role == "system"), "")
        user = next((text_of(m) for m in reversed(body.messages) if m.role == "user"), "")
        try:
            prompt = parse_prompt(system, user)
        except PromptError as exc:
            self.stats.request("invalid")
            self.stats.finished(400)
            return error(400, f"sim: {exc}", "invalid_request_error")

        self._next_id += 1
        request_id = f"chatcmpl-sim-{self._next_id:08x}"
        form = body.response_format or {}
        kind = form.get("type", "text")
        if kind != "text" and kind not in self.config.structured_dialects:
            self.stats.request("invalid")
            self.stats.finished(400)
            return error(400, f"sim: response_format type {kind!r} is not served here",
                          "invalid_request_error")
        structured = kind in ("json_schema", "json_object")
        entry: dict[str, Any] = {
            "id": request_id,
            "t_s": round(time.monotonic() - self.stats.started, 6),
            "task": prompt.task,
            "round": prompt.round,
            "model": body.model,
            "structured": structured,
            "fault": None,
            "status": None,
            "messages": body.messages,
        }
        self.requests.add(entry)
        self.stats.request(prompt.task)
        fault = self._draw_fault()
        if fault is not None:
            entry["fault"] = fault
            self.stats.fault(fault)
        response = await self._respond(request_id, body, prompt, fault, structured)
        entry["status"] = response.status
        self.stats.finished(response.status)
        return response

    async def _respond(
        self,
        request_id: str,
        body: ChatRequest,
        prompt: SimPrompt,
        fault: str | None,
        structured: bool,
    ) -> web.Response:
        if fault == "429":
            wait_s = self.config.retry_after_s
            headers = {
                "Retry-After": str(math.ceil(wait_s)),
                "retry-after-ms": str(int(wait_s * 1000)),
            }
            return error(429, "sim: simulated rate limit", "rate_limit_exceeded", headers)
        if fault == "hang" and await self._hang():
            return error(503, "sim: server shutting down", "server_shutdown")

        stats = self.stats
        stats.enqueue()
        if self._slots is not None:
            try:
                await self._slots.acquire()
            finally:
                stats.dequeue()
        else:
            stats.dequeue()
        stats.start_serving()
        try:
            delay_s = self._service_time_s()
            if delay_s > 0.0:
                await asyncio.sleep(delay_s)
            if fault == "500":
                return error(500, "sim: simulated internal error", "server_error")
            if fault == "malformed":
                # A finished answer the parser cannot read: "length" would be a truncation,
                # which the ask layer re-asks with more room and never hands to a parser.
                content, finish = render_malformed(prompt.task, structured=structured), "stop"
            elif fault == "truncated":
                content, finish = render_malformed(prompt.task, structured=structured), "length"
            else:
                content, finish = render(prompt, self.config, structured=structured,
                                         schema=request_schema(body.response_format)), "stop"
                if fault == "looped":
                    content, finish = content + LOOP_TAIL, "length"
        finally:
            stats.stop_serving()
            if self._slots is not None:
                self._slots.release()

        prompt_tokens = 1 + sum(len(text_of(m)) for m in body.messages) // 4
        completion_tokens = 1 + len(content) // 4
        stats.prompt_tokens += prompt_tokens
        stats.completion_tokens += completion_tokens
        return json_response(completion_body(
            request_id, body.model, content, finish, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens))

    # -- selection endpoints ---------------------------------------------------------

    async def _embeddings(self, request: web.Request) -> web.Response:
        try:
            body = embeddings_decoder.decode(await request.read())
        except msgspec.MsgspecError as exc:
            self.stats.finished(400)
            return error(400, f"invalid request body: {exc}", "invalid_request_error")
        inputs = [body.input] if isinstance(body.input, str) else body.input
        if not has_extra("selection"):  # the vectors are numpy's
            self.stats.finished(501)
            extra = missing_extra("selection", "the simulator's embeddings")
            return error(501, str(extra), "not_implemented")
        self.stats.request("embeddings")
        data = [
            {"object": "embedding", "index": i, "embedding": embedding_answer(text, self.config)}
            for i, text in enumerate(inputs)
        ]
        tokens = sum(1 + len(text) // 4 for text in inputs)
        self.stats.prompt_tokens += tokens
        self.stats.finished(200)
        return json_response({"object": "list", "data": data, "model": sim_model_name(body.model),
                      "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _completions(self, request: web.Request) -> web.Response:
        try:
            body = completions_decoder.decode(await request.read())
        except msgspec.MsgspecError as exc:
            self.stats.finished(400)
            return error(400, f"invalid request body: {exc}", "invalid_request_error")
        self.stats.request("completions")
        delay_s = self._service_time_s()
        if delay_s > 0.0:
            await asyncio.sleep(delay_s)
        logprobs = echo_logprobs(body.prompt)
        prompt_tokens = logprobs.pop("prompt_tokens")
        if not body.echo:  # only the generated token
            logprobs = {key: value[-1:] if isinstance(value, list) else value
                        for key, value in logprobs.items()}
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += 1
        self.stats.finished(200)
        self._next_id += 1
        return json_response({
            "id": f"cmpl-sim-{self._next_id:08x}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": sim_model_name(body.model),
            "choices": [{
                "index": 0,
                "text": completion_text(body.prompt, body.echo),
                "logprobs": logprobs if body.logprobs is not None else None,
                "finish_reason": "length",
            }],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1,
                      "total_tokens": prompt_tokens + 1},
        })

    async def _hang(self) -> bool:
        """Sleep ``hang_s`` (past the client's timeout); True if the server closed meanwhile."""
        assert self._closing is not None
        try:
            await asyncio.wait_for(self._closing.wait(), timeout=self.config.hang_s)
        except TimeoutError:
            return False
        return True
