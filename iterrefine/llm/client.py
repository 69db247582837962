"""One OpenAI-compatible chat client per LLM role.

Each :class:`LLMClient` owns an ``openai.AsyncOpenAI`` on its own connection pool
and adds what a stream processor needs on top of it: bounded concurrency,
requests/min and tokens/min limits, a total per-request deadline, our own retries
(openai's are switched off so that there is one retry policy in the process, the
one in :mod:`iterrefine.retry`), error translation into :mod:`iterrefine.errors`,
token accounting and metrics. The API key is never logged and is scrubbed from
any server message we pass on.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from types import TracebackType
from typing import Any, cast

import httpx2
import msgspec
import openai
import structlog
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from openai.types.chat.completion_create_params import ResponseFormat

from iterrefine.config import LLMRoleConfig
from iterrefine.errors import IterrefineError
from iterrefine.llm.failures import FailureMap
from iterrefine.llm.ratelimit import TokenBucket
from iterrefine.metrics import Metrics
from iterrefine.retry import Backoff, retry_async

log = structlog.get_logger("iterrefine.llm")


class ChatResult(msgspec.Struct, frozen=True, kw_only=True):
    """One chat completion: the answer text and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    #: Wall time of the whole call: queueing, rate-limit waits and retries included.
    seconds: float
    #: ``"length"`` means the answer was cut at ``max_tokens``.
    finish_reason: str | None = None
    attempts: int = 1


class LLMStats(msgspec.Struct, frozen=True, kw_only=True):
    """Cumulative counters of one client, for the run summary."""

    #: HTTP requests sent, retries included.
    requests: int = 0
    #: Requests that failed (any status other than ok).
    errors: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def estimate_tokens(messages: list[dict[str, str]], max_tokens: int) -> int:
    """Pre-call estimate for the tokens/min bucket: prompt chars / 4 + the completion budget."""
    return sum(len(m.get("content", "")) for m in messages) // 4 + max_tokens


def build_http_client(config: LLMRoleConfig) -> httpx2.AsyncClient:
    """A connection pool sized to the role's concurrency.

    When given an ``http_client``, openai uses it as is, with httpx2's own pool
    defaults (100 connections, 20 kept alive), not openai's; and openai's defaults
    keep only 100 connections alive. Either would cap or churn a role running a
    few hundred requests at once, so the pool matches ``max_concurrency``.
    """
    size = max(1, config.max_concurrency)
    return httpx2.AsyncClient(
        limits=httpx2.Limits(max_connections=size, max_keepalive_connections=size),
        timeout=httpx2.Timeout(config.timeout_s, connect=min(10.0, config.timeout_s)),
        follow_redirects=True,
    )


class LLMClient:
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
    ) -> None:
        self.role = role
        self.config = config
        # Read now so that a missing key is a ConfigError at startup, not at the first item.
        self._api_key = config.api_key()
        self._metrics = metrics
        self._http_client = http_client
        self._backoff = backoff or Backoff()
        self._semaphore = asyncio.Semaphore(max(1, config.max_concurrency))
        self._request_bucket = (
            TokenBucket.per_minute(config.requests_per_minute)
            if config.requests_per_minute
            else None
        )
        self._token_bucket = (
            TokenBucket.per_minute(config.tokens_per_minute) if config.tokens_per_minute else None
        )
        self._failures = FailureMap(role, config, self._api_key)
        self._where = self._failures.where
        self._api: openai.AsyncOpenAI | None = None
        self._closed = False
        self._requests = 0
        self._errors = 0
        self._retries = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0

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
        self._api = api

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        api, self._api = self._api, None
        if api is not None and self._http_client is None:
            await api.close()

    async def __aenter__(self) -> LLMClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # getattr: __init__ may have raised (missing key) before these were set.
        if getattr(self, "_api", None) is not None and not getattr(self, "_closed", True):
            warnings.warn(
                f"Unclosed LLMClient for role {self.role!r}; use 'async with' or await aclose()",
                ResourceWarning,
                stacklevel=1,
                source=self,
            )

    # -- calls -----------------------------------------------------------------------

    def stats(self) -> LLMStats:
        return LLMStats(
            requests=self._requests,
            errors=self._errors,
            retries=self._retries,
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self._completion_tokens,
        )

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        json_schema: dict[str, Any] | None = None,
        schema_name: str = "answer",
        max_tokens: int | None = None,
    ) -> ChatResult:
        """One chat completion, retried on transient failures.

        Raises :class:`LLMTransientError` when retries run out and :class:`LLMError`
        for failures no retry can fix (authentication, bad request, unknown model).
        """
        api = self._api
        if api is None:
            raise RuntimeError(f"{self._where}: call start() or use 'async with' first")
        limit = max_tokens if max_tokens is not None else self.config.max_tokens
        response_format: ResponseFormat | None = None
        if json_schema is not None and self.config.structured_output:
            response_format = {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": json_schema, "strict": True},
            }
        estimate = estimate_tokens(messages, limit)
        started = time.monotonic()
        attempts = 0

        async def attempt() -> ChatResult:
            nonlocal attempts
            attempts += 1
            return await self._attempt(api, messages, limit, response_format, estimate)

        def on_retry(retry: int, exc: BaseException, delay_s: float) -> None:
            self._retries += 1
            log.warning(
                "llm_retry", role=self.role, model=self.config.model, retry=retry,
                delay_s=round(delay_s, 3), error=str(exc),
            )

        try:
            result = await retry_async(
                attempt,
                attempts=self.config.max_retries + 1,
                backoff=self._backoff,
                on_retry=on_retry,
            )
        except IterrefineError as exc:
            log.warning(
                "llm_failed", role=self.role, model=self.config.model, attempts=attempts,
                retriable=exc.retriable, error=str(exc),
            )
            raise
        return msgspec.structs.replace(
            result, seconds=time.monotonic() - started, attempts=attempts
        )

    async def _attempt(
        self,
        api: openai.AsyncOpenAI,
        messages: list[dict[str, str]],
        max_tokens: int,
        response_format: ResponseFormat | None,
        estimate: int,
    ) -> ChatResult:
        async with self._semaphore:
            if self._request_bucket is not None:
                await self._request_bucket.acquire()
            if self._token_bucket is not None:
                await self._token_bucket.acquire(estimate)
            self._requests += 1
            started = time.monotonic()
            outcome: ChatResult | IterrefineError
            try:
                # openai's own timeout is per phase (connect, each read); this bounds the
                # whole request, so a server trickling bytes cannot hold a slot forever.
                async with asyncio.timeout(self.config.timeout_s):
                    completion = await api.chat.completions.create(
                        model=self.config.model,
                        messages=cast("list[ChatCompletionMessageParam]", messages),
                        temperature=self.config.temperature,
                        max_tokens=max_tokens,
                        response_format=(
                            response_format if response_format is not None else openai.omit
                        ),
                    )
            except TimeoutError:
                status, outcome = self._failures.timeout()
            except openai.APIError as exc:
                structured = response_format is not None
                status, outcome = self._failures.translate(exc, structured=structured)
            else:
                status, outcome = self._read(completion)
            seconds = time.monotonic() - started

        self._observe(status, seconds)
        if isinstance(outcome, IterrefineError):
            self._errors += 1
            if self._token_bucket is not None and status.isdigit():
                # The server turned the request away (HTTP status): it used no tokens there.
                self._token_bucket.adjust(-estimate)
            raise outcome
        result = outcome
        self._prompt_tokens += result.prompt_tokens
        self._completion_tokens += result.completion_tokens
        if self._token_bucket is not None and (result.prompt_tokens or result.completion_tokens):
            self._token_bucket.adjust(result.prompt_tokens + result.completion_tokens - estimate)
        if self._metrics is not None:
            tokens = self._metrics.llm_tokens_total
            tokens.labels(role=self.role, kind="prompt").inc(result.prompt_tokens)
            tokens.labels(role=self.role, kind="completion").inc(result.completion_tokens)
        return result

    def _observe(self, status: str, seconds: float) -> None:
        if self._metrics is None:
            return
        self._metrics.llm_requests_total.labels(role=self.role, status=status).inc()
        self._metrics.llm_seconds.labels(role=self.role).observe(seconds)

    def _read(self, completion: object) -> tuple[str, ChatResult | IterrefineError]:
        """Check the body's shape: outside strict mode openai passes a 200 on unvalidated.

        (An HTML page comes back as a ``str``, wrong JSON as a hollow ChatCompletion.)
        """
        if not isinstance(completion, ChatCompletion) or not isinstance(completion.choices, list):
            return self._failures.invalid_response()
        if not completion.choices:
            return self._failures.empty_response()
        choice: object = completion.choices[0]
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None)
        if message is None or (text is not None and not isinstance(text, str)):
            return self._failures.invalid_response()
        usage = completion.usage
        finish_reason = getattr(choice, "finish_reason", None)
        return "ok", ChatResult(
            text=text or "",
            prompt_tokens=_token_count(getattr(usage, "prompt_tokens", None)),
            completion_tokens=_token_count(getattr(usage, "completion_tokens", None)),
            model=completion.model if isinstance(completion.model, str) else self.config.model,
            seconds=0.0,  # set by chat(), which sees the whole call
            finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        )


def _token_count(value: object) -> int:
    """A usage count, or 0 when the server left it out or sent something else."""
    return value if isinstance(value, int) and value >= 0 else 0
