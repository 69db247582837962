"""One OpenAI-compatible chat client per LLM role.

Each :class:`LLMClient` owns an ``openai.AsyncOpenAI`` on its own connection pool
and adds what a stream processor needs on top of it: bounded concurrency,
requests/min and tokens/min limits, a total per-request deadline, our own retries
(openai's are switched off so that there is one retry loop for every call of a role,
:mod:`iterrefine.llm._retries`), error translation into :mod:`iterrefine.errors`,
token accounting and metrics (:mod:`iterrefine.llm._tally`). The API key is never
logged and is scrubbed from any server message we pass on.

One process has to keep a few hundred requests a second in flight, next to its
Kafka consumers, so the per-request CPU of the SDK matters (measured by
``benchmarks/llm_client_overhead.py``). Requests still go through openai (its
headers, auth, error types) but take its cheapest documented paths:

* the pool is openai's aiohttp transport (``openai.DefaultAioHttpClient``): httpx2's
  own pool (httpcore2, h11, anyio streams) took some 40% of openai's CPU per request;
* the body is encoded once per call with msgspec and sent with ``AsyncOpenAI.post``
  as raw content, skipping the TypedDict transform of ``chat.completions.create``;
* the answer comes back as the raw ``httpx2.Response`` and is decoded by msgspec into
  the few fields we read, instead of into pydantic models.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Callable
from typing import Any

import httpx2
import msgspec
import openai
import structlog

from iterrefine.config import Dialect, LLMRoleConfig
from iterrefine.errors import IterrefineError
from iterrefine.lifecycle import AsyncService
from iterrefine.llm import _dialect as dialects
from iterrefine.llm._dialect_choice import DialectChoice
from iterrefine.llm._endpoint_probe import model_problem, probe_completion, probe_models
from iterrefine.llm._failures import FailureMap
from iterrefine.llm._hedge import Hedging
from iterrefine.llm._ratelimit import TokenBucket
from iterrefine.llm._retries import Retries
from iterrefine.llm._stream import form_kind, send_chat
from iterrefine.llm._tally import Tally
from iterrefine.llm._wire import (
    ChatResult,
    LLMStats,
    build_http_client,
    chat_body,
    encode_body,
    estimate_tokens,
    settle_platform,
)
from iterrefine.llm.budget import Budget
from iterrefine.llm.cache import (
    CachedAnswer,
    ResponseCache,
    RoleCache,
    endpoint_identity,
    request_key,
    sampling_knobs,
)
from iterrefine.llm.chat import ChatOptions
from iterrefine.llm.circuit import Circuit
from iterrefine.observe.metrics import Metrics
from iterrefine.retry import Backoff

log = structlog.get_logger("iterrefine.llm")

# What chat.completions.create asks for: the bearer key (pinned in start()).
_REQUEST_OPTIONS: openai.RequestOptions = {"security": {"bearer_auth": True}}


class LLMClient(AsyncService):
    """Chat completions for one role (``strong``, ``backbone``, ...) of one endpoint.

    Use as ``async with LLMClient(...) as llm: await llm.chat(...)``. When an
    ``http_client`` is passed in, the caller owns it and closes it.
    """

    def __init__(
        self,
        role: str,
        config: LLMRoleConfig,
        *,
        metrics: Metrics | None = None,
        http_client: httpx2.AsyncClient | None = None,
        backoff: Backoff | None = None,
        cache: ResponseCache | None = None,
        on_circuit_open: Callable[[Circuit], None] | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.role = role
        self.config = config
        #: The run's cost cap, shared by every role (:mod:`iterrefine.llm.budget`).
        self._budget = budget
        # Read now so that a missing key is a ConfigError at startup, not at the first item.
        self._api_key = config.api_key()
        self._http_client = http_client
        self._retries = Retries(role, config, backoff or Backoff(
            base_s=config.retry_base_s, max_s=config.retry_max_s))
        self._semaphore = asyncio.Semaphore(max(1, config.max_concurrency))
        rpm, tpm = config.requests_per_minute, config.tokens_per_minute
        self._request_bucket = TokenBucket.per_minute(rpm) if rpm else None
        self._token_bucket = TokenBucket.per_minute(tpm) if tpm else None
        self._failures = FailureMap(role, config, self._api_key)
        self._hedging = Hedging(role, config)
        self._where = self._failures.where
        self._cache = None if cache is None else RoleCache(cache, role, metrics)
        self._identity = config.endpoint_identity or endpoint_identity(config.base_url)
        self._simulated_answers = 0
        self.circuit = Circuit(
            role, self._where, self._probe_open_circuit,
            failures_to_open=config.circuit_failures,
            probe_interval_s=config.probe_interval_s,
            gauge=None if metrics is None else metrics.llm_circuit_open.labels(role=role),
            on_open=on_circuit_open,
        )
        if metrics is not None:
            metrics.llm_circuit_open.labels(role=role).set(0)
        self._tally = Tally(role, metrics)
        self._dialect = DialectChoice(config.structured_output, self._probe_send, role=role,
                                      model=config.model)
        self._api: openai.AsyncOpenAI | None = None
        self._chat_url = ""
        self._closed = False
        self._probes = 0
        #: (metric status, problem) of the last :meth:`probe`, for preflight's verdict.
        self.last_probe: tuple[str, str | None] | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self._where}: client is closed")
        if self._api is not None:
            return
        api = openai.AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.config.base_url,
            timeout=self.config.timeout_s,
            max_retries=0,
            http_client=self._http_client or build_http_client(self.config),
            # openai also reads OPENAI_CUSTOM_HEADERS, whose Authorization would replace
            # this role's key; an explicit header wins over it.
            default_headers={"Authorization": f"Bearer {self._api_key}"},
        )
        # ...and OPENAI_ORG_ID / OPENAI_PROJECT_ID, which must not reach other endpoints:
        # the role's config is the only source of its settings.
        api.organization = None
        api.project = None
        # The URL openai would merge from base_url and "/chat/completions", made once:
        # given an absolute URL, openai skips the merge (a URL copy and re-parse) per call.
        base = api.base_url
        self._chat_url = str(base.copy_with(raw_path=base.raw_path + b"chat/completions"))
        await settle_platform(api)
        self._api = api

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._dialect.aclose()
        await self.circuit.aclose()
        api, self._api = self._api, None
        if api is not None and self._http_client is None:
            await api.close()

    def __del__(self) -> None:
        # getattr: __init__ may have raised (missing key) before these were set.
        if getattr(self, "_api", None) is not None and not getattr(self, "_closed", True):
            warnings.warn(f"Unclosed LLMClient for role {self.role!r}; use 'async with' or "
                          "await aclose()", ResourceWarning, stacklevel=1, source=self)

    def _started(self) -> openai.AsyncOpenAI:
        if self._api is None:
            raise RuntimeError(f"{self._where}: call start() or use 'async with' first")
        return self._api

    # -- calls -----------------------------------------------------------------------

    def stats(self) -> LLMStats:
        stats = self._tally.stats(retries=self._retries.count, probes=self._probes,
                                  circuit_opened=self.circuit.opened, cache=self._cache)
        return msgspec.structs.replace(stats, simulated_answers=self._simulated_answers,
                                       hedged=self._hedging.sent)

    @property
    def answered_by_simulator(self) -> bool:
        """Whether any answer of this role (sent or cached) came from iterrefine's simulator."""
        return self._simulated_answers > 0

    def keep_usage_by_item(self) -> None:
        """Count requests and tokens per item from now on (:meth:`usage_by_item`)."""
        self._tally.keep_per_item()

    def usage_by_item(self) -> dict[str, tuple[int, int, int]]:
        """Item id → (requests, prompt tokens, completion tokens); "" for calls of no item."""
        by_item = self._tally.by_item or {}
        return {key: (row[0], row[1], row[2]) for key, row in by_item.items()}

    def record_answer(self, task: str, outcome: str, *, truncated: int,
                      looped: int = 0) -> None:
        """Count how an answer of ``task`` read (the ask layer calls this)."""
        self._tally.answer(task, outcome, truncated=truncated, looped=looped)

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        json_schema: dict[str, Any] | None = None,
        schema_name: str = "answer",
        max_tokens: int | None = None,
        options: ChatOptions | None = None,
    ) -> ChatResult:
        """One chat completion, retried on transient failures.

        ``options``: the task's stop sequences and whether the role's frequency penalty
        applies (:class:`~iterrefine.llm.chat.ChatOptions`).

        Raises :class:`LLMTransientError` when retries run out and :class:`LLMError`
        for failures no retry can fix (authentication, bad request, unknown model).
        """
        api = self._started()
        limit = max_tokens if max_tokens is not None else self.config.max_tokens
        started = time.monotonic()
        key = None
        if self._cache is not None:
            # Before the dialect is known: a cached answer needs no probe of the endpoint.
            key = request_key(endpoint=self._identity, model=self.config.model,
                              messages=messages, temperature=self.config.temperature,
                              max_tokens=limit, json_schema=json_schema,
                              schema_name=schema_name, knobs=sampling_knobs(
                                  chat_body(self.config, messages, limit, None, options)))
            hit = self._cache.lookup(key)
            if hit is not None:
                log.debug("llm_cache_hit", role=self.role, key=key)
                self._simulated_answers += hit.simulated
                return ChatResult(
                    text=hit.text, prompt_tokens=hit.prompt_tokens,
                    completion_tokens=hit.completion_tokens, model=hit.model,
                    seconds=time.monotonic() - started, finish_reason=hit.finish_reason,
                    attempts=0, cache_key=key, cached=True, simulated=hit.simulated,
                )
        form: dict[str, Any] | None = None
        result: ChatResult | None = None
        if json_schema is not None:
            guess = None if self.circuit.is_open else self._dialect.speculative()
            if guess is not None:
                speculative = dialects.response_format(guess, schema_name, json_schema)
                try:
                    result = await self._complete(api, messages, limit, speculative, options,
                                                  speculative=True)
                except IterrefineError as exc:  # the probe decides; then sent as usual
                    log.info("llm_speculative_dialect_failed", role=self.role, dialect=guess,
                             error=str(exc))
            if result is None:
                form = dialects.response_format(await self.dialect(), schema_name,
                                                json_schema)
        if result is None:
            result = await self._complete(api, messages, limit, form, options,
                                         speculative=False)
        self._simulated_answers += result.simulated
        return msgspec.structs.replace(result, seconds=time.monotonic() - started,
                                       cache_key=key)

    async def _complete(
        self, api: openai.AsyncOpenAI, messages: list[dict[str, str]], limit: int,
        form: dict[str, Any] | None, options: ChatOptions | None, *, speculative: bool,
    ) -> ChatResult:
        """One paid call with ``response_format`` ``form``.

        ``speculative``: sent in a guessed dialect while the probe is out, so one attempt
        and outside the circuit (a server refusing the dialect is not down).
        """
        body = chat_body(self.config, messages, limit, form, options)
        # Encoded once: retries send the same bytes.
        content = encode_body(body)
        estimate = estimate_tokens(messages, limit)
        prompt_estimate = estimate - limit
        budget, held = self._budget, 0.0
        if budget is not None:  # the run's cost cap: the worst case is held before sending
            held = await budget.reserve(self.role, prompt_estimate, limit)
        used = (0, 0)
        try:
            if speculative:
                result = await self._attempt(api, content, estimate, structured=form_kind(form),
                                             speculative=True, prompt_estimate=prompt_estimate)
                attempts = 1
            else:
                result, attempts = await self._retries.call(
                    lambda: self._attempt(api, content, estimate, structured=form_kind(form),
                                          prompt_estimate=prompt_estimate),
                    circuit=self.circuit)
            used = (result.prompt_tokens, result.completion_tokens)
        finally:
            if budget is not None:
                budget.settle(self.role, held, *used)
        return msgspec.structs.replace(result, attempts=attempts)

    @property
    def structured_output(self) -> str:
        """The dialect in use, or ``auto`` while the probe has not decided yet."""
        return self._dialect.current

    async def dialect(self) -> Dialect:
        """The structured-output dialect of this role (``auto``: probed once)."""
        return await self._dialect.decide()

    async def _probe_send(self, body: dict[str, Any]) -> tuple[int, str] | None:
        return await dialects.post_probe(self._started(), self._chat_url, encode_body(body),
                                         options=_REQUEST_OPTIONS,
                                         timeout_s=min(self.config.timeout_s, 60.0))

    def remember(self, reply: object, *, readable: bool) -> None:
        """Tell the cache whether ``reply`` could be read: only readable answers are kept.

        Called by :func:`iterrefine.tasks.ask.ask` once the task's parser has seen it.
        """
        if self._cache is None or not isinstance(reply, ChatResult) or reply.cache_key is None:
            return
        if readable and not reply.cached:
            self._cache.keep(reply.cache_key, CachedAnswer(
                text=reply.text, model=reply.model, prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens, finish_reason=reply.finish_reason,
                simulated=reply.simulated,
            ))
        elif not readable and reply.cached:
            self._cache.forget(reply.cache_key)

    async def probe(self) -> str | None:
        """Ask the endpoint whether it is up and takes our key: None if so, else why not.

        ``GET /models`` costs no tokens; a server without that route (404/405) is
        asked for a one-token completion instead.
        """
        api = self._started()
        status, problem = await probe_models(api, self._failures)
        if status in ("404", "405"):
            status, problem = await probe_completion(api, self._failures, self._chat_url)
        self.last_probe = (status, problem)
        return problem

    async def check_model(self) -> str | None:
        """Whether the endpoint serves this role's model: None if so, else why not.

        Listed by ``GET /models``: served. Not listed (servers list aliases, or one name
        for whatever they load): one chat call of one token with the role's model, whose
        "no such model" answer is the proof.
        """
        api = self._started()
        return await model_problem(api, self._failures, self._chat_url, role=self.role)

    async def _probe_open_circuit(self) -> str | None:
        """Whether the endpoint is back: a one-token completion, the call that was failing.

        ``GET /models`` can answer while completions fail (a 5xx storm behind a healthy
        front), so only a rejected key, which ``/models`` shows too, is probed for free.
        """
        api = self._api
        if api is None:
            return f"{self._where}: client is closed"
        self._probes += 1
        if self.circuit.open_reason == "auth":
            status, problem = await probe_models(api, self._failures)
            if status not in ("404", "405"):
                return problem
        _, problem = await probe_completion(api, self._failures, self._chat_url)
        return problem

    async def _attempt(
        self, api: openai.AsyncOpenAI, content: bytes, estimate: int, *, structured: str | None,
        speculative: bool = False, prompt_estimate: int = 0,
    ) -> ChatResult:
        async with self._semaphore:
            if self._request_bucket is not None:
                await self._request_bucket.acquire()
            if self._token_bucket is not None:
                await self._token_bucket.acquire(estimate)
            self._tally.requests += 1
            started = time.monotonic()
            outcome: ChatResult | IterrefineError
            # A request lost by the server is sent again meanwhile (llm._hedge).
            status, outcome = await send_chat(
                api, self._chat_url, content, self._failures, self.config,
                options=_REQUEST_OPTIONS, prompt_estimate=prompt_estimate,
                structured=structured, hedging=self._hedging)
            seconds = time.monotonic() - started

        self._tally.observe(status, seconds)
        log.debug("llm_request", role=self.role, status=status, seconds=round(seconds, 4),
                  structured=structured)
        if isinstance(outcome, IterrefineError):
            if not speculative:
                self.circuit.failed(status, outcome)
            self._tally.errors += 1
            if self._token_bucket is not None and status.isdigit():
                # The server turned the request away (HTTP status): it used no tokens there.
                self._token_bucket.adjust(-estimate)
            raise outcome
        result = outcome
        self.circuit.succeeded()
        self._tally.tokens(result.prompt_tokens, result.completion_tokens)
        if self._token_bucket is not None and (result.prompt_tokens or result.completion_tokens):
            self._token_bucket.adjust(result.prompt_tokens + result.completion_tokens - estimate)
        return result

    async def post_json(self, path: str, body: dict[str, Any]) -> bytes:
        """The raw 200 body of ``POST {base_url}/{path}`` (``completions``, ``embeddings``).

        The selection roles' calls: the same limits, deadline, error translation, metrics
        and retry budget as :meth:`chat` (``max_retries + 1`` attempts, then
        :class:`LLMRetriesExhausted`), not cached. They stay out of the role's circuit:
        its recovery probe is a chat completion, which an embeddings-only server lacks.
        """
        api = self._started()
        base = api.base_url
        url = str(base.copy_with(raw_path=base.raw_path + path.lstrip("/").encode()))
        content = encode_body({"model": self.config.model, **body})
        answer, _ = await self._retries.call(lambda: self._raw_attempt(api, url, content))
        return answer

    async def _raw_attempt(self, api: openai.AsyncOpenAI, url: str, content: bytes) -> bytes:
        async with self._semaphore:
            if self._request_bucket is not None:
                await self._request_bucket.acquire()
            self._tally.requests += 1
            started = time.monotonic()
            outcome: bytes | IterrefineError
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    response = await api.post(
                        url, cast_to=httpx2.Response, content=content, options=_REQUEST_OPTIONS
                    )
            except TimeoutError:
                status, outcome = self._failures.timeout()
            except openai.APIError as exc:
                status, outcome = self._failures.translate(exc, structured=False)
            else:
                status, outcome = "ok", response.content
            seconds = time.monotonic() - started
        self._tally.observe(status, seconds)
        if isinstance(outcome, IterrefineError):
            self._tally.errors += 1
            raise outcome
        return outcome
