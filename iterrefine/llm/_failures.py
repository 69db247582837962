"""Which LLM failures a retry can fix, and what to tell the operator about the rest.

openai raises its own exception tree; the runtime only knows :mod:`iterrefine.errors`.
:class:`FailureMap` translates one into the other for one role, with the metric
status label (``"429"``, ``"timeout"``, ``"connection"``, ...):

    APITimeoutError, asyncio deadline    -> LLMTransientError  "timeout"
    APIConnectionError                   -> LLMTransientError  "connection"
      (also an APITimeoutError that the aiohttp transport made of a refused
      or dropped connection)
    408, 425, 429, 5xx                   -> LLMTransientError  (retry_after_s from the headers)
    any other 4xx                        -> LLMError, the message says which setting to fix
    a 200 that is not a chat completion  -> LLMError           "invalid_response"

An ``x-should-retry`` header (sent by OpenAI) overrides the status-based verdict.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from datetime import UTC
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import openai

from iterrefine.config import LLMRoleConfig
from iterrefine.errors import IterrefineError, LLMError, LLMTransientError

#: Statuses that say "try again later" rather than "this request is wrong".
_TRANSIENT_STATUSES = frozenset({408, 425, 429})
_MAX_SERVER_MESSAGE_CHARS = 300


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    milliseconds = _finite_float(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return max(0.0, milliseconds / 1000.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _finite_float(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses as naive; HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _finite_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def display_url(url: str) -> str:
    """``url`` without user info or query string, which may hold credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _dropped_connection(exc: BaseException) -> aiohttp.ClientConnectionError | None:
    """The aiohttp connection error (refused, reset, closed) behind ``exc``, if any.

    openai's aiohttp transport maps every ``ClientConnectionError`` to httpx2's
    ``ConnectTimeout``, so a refused connection would read as "no answer in time".
    """
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(
            cause, TimeoutError
        ):
            return cause
        cause = cause.__cause__
    return None


class FailureMap:
    """Translates the failures of one role's requests into iterrefine errors."""

    def __init__(self, role: str, config: LLMRoleConfig, api_key: str) -> None:
        self.config = config
        self.where = f"LLM role {role!r} (model {config.model!r} at {display_url(config.base_url)})"
        # With no api_key_env the "key" is a public placeholder, not worth scrubbing.
        self._secret = api_key if config.api_key_env is not None and len(api_key) >= 4 else None

    def redact(self, text: str) -> str:
        """Drop the key (some servers echo the one they rejected) and cap the length."""
        if self._secret is not None:
            text = text.replace(self._secret, "***")
        return text[:_MAX_SERVER_MESSAGE_CHARS]

    def timeout(self) -> tuple[str, IterrefineError]:
        return "timeout", LLMTransientError(
            f"{self.where}: no answer within timeout_s={self.config.timeout_s:g}"
        )

    def invalid_response(self, detail: str | None = None) -> tuple[str, IterrefineError]:
        # A 200 with HTML or some other JSON: typically a base_url that is not the API root.
        why = f" ({self.redact(detail)})" if detail else ""
        return "invalid_response", LLMError(
            f"{self.where}: the answer is not an OpenAI chat completion{why}; check base_url "
            "(OpenAI-compatible servers usually serve the API under /v1)"
        )

    def empty_response(self) -> tuple[str, IterrefineError]:
        return "empty_response", LLMTransientError(f"{self.where}: the answer had no choices")

    def translate(self, exc: openai.APIError, *, structured: bool) -> tuple[str, IterrefineError]:
        """(metric status, our error) for an openai error, by whether a retry can help."""
        dropped = _dropped_connection(exc)
        if isinstance(exc, openai.APITimeoutError) and dropped is None:
            return self.timeout()
        if isinstance(exc, openai.APIConnectionError):
            cause = dropped if dropped is not None else exc.__cause__
            return "connection", LLMTransientError(
                f"{self.where}: cannot connect ({type(cause).__name__}); "
                "check base_url and that the server is running"
            )
        if not isinstance(exc, openai.APIStatusError):
            return "invalid_response", LLMError(
                f"{self.where}: unusable answer: {self.redact(str(exc))}"
            )
        code = exc.status_code
        headers = exc.response.headers
        # openai formats its message as "Error code: 429 - <server message>".
        server = self.redact(exc.message.removeprefix(f"Error code: {code}").lstrip(" -"))
        transient = code in _TRANSIENT_STATUSES or code >= 500
        should_retry = headers.get("x-should-retry")
        if should_retry in ("true", "false"):
            transient = should_retry == "true"
        if transient:
            return str(code), LLMTransientError(
                f"{self.where}: HTTP {code}: {server}", retry_after_s=parse_retry_after(headers)
            )
        return str(code), LLMError(
            f"{self.where}: HTTP {code}: {server}; {self._fix_for(code, structured=structured)}"
        )

    def _fix_for(self, code: int, *, structured: bool) -> str:
        env = self.config.api_key_env
        if code in (401, 403) and env is None:
            return "the server wants a key: set api_key_env to the variable that holds it"
        if code == 401:
            return f"check api_key_env: ${env} must hold a valid key for this endpoint"
        if code == 403:
            return f"check that the key in ${env} may use model {self.config.model!r}"
        if code == 404:
            return (
                "check model (the server must serve exactly this name) and base_url "
                "(OpenAI-compatible servers usually serve the API under /v1)"
            )
        if code in (400, 422) and structured:
            return (
                "the server may not support this structured-output dialect: set "
                'structured_output = "auto" (probes the server), "json_object" (llama.cpp) '
                'or "off" for this role'
            )
        if code == 413:
            return "the prompt is too large for this endpoint; lower the item size limits"
        return "check the prompt length against the model's context window and max_tokens"
