"""The wire side of an LLM role: its HTTP pool and TLS, the body codec, and what a call returns.

:mod:`iterrefine.llm.client` drives calls (limits, retries, cache, circuit); this module
holds the pieces it sends and reads: the aiohttp-backed pool sized to the role, the
msgspec codec that decodes only the few fields we read, and the result records.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from typing import Any

import httpx2
import msgspec
import openai

from iterrefine.config import LLMRoleConfig
from iterrefine.errors import IterrefineError
from iterrefine.llm._failures import FailureMap
from iterrefine.llm.chat import ChatOptions


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
    #: The response cache's key for this request (None without a cache).
    cache_key: str | None = None
    #: Answered from the response cache: no request was sent.
    cached: bool = False
    #: The endpoint said it is iterrefine's simulator (its ``system_fingerprint``), or the
    #: cached answer was one of its answers: the output made from it is marked simulated.
    simulated: bool = False


class LLMStats(msgspec.Struct, frozen=True, kw_only=True):
    """Cumulative counters of one client, for the run summary."""

    #: HTTP requests sent, retries included.
    requests: int = 0
    #: Requests that failed (any status other than ok).
    errors: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Sum of every request's latency (the mean is this over ``requests``).
    latency_sum_s: float = 0.0
    #: A bounded uniform sample of raw request latencies, for the summary's percentiles.
    latency_samples_s: tuple[float, ...] = ()
    #: Calls answered by the response cache (no request sent) and calls it could not answer.
    cache_hits: int = 0
    cache_misses: int = 0
    #: Prompt + completion tokens of the answers the cache gave back.
    cache_tokens_saved: int = 0
    #: Cached answers refused because their seal did not match (tampered or corrupt).
    cache_rejected: int = 0
    #: Endpoint probes while the role's circuit was open.
    probes: int = 0
    circuit_opened: int = 0
    #: Answers (sent or cached) that came from iterrefine's simulator.
    simulated_answers: int = 0
    #: Second requests sent because the first had not answered in the role's usual time.
    hedged: int = 0


# The wire shape of the few fields we read; the decoder skips everything else without
# building it. ``Any`` where a junk value should fall back (model, finish reason, token
# counts) rather than fail a call whose answer is fine.


class _Message(msgspec.Struct, frozen=True, gc=False):
    content: str | None = None


class _Choice(msgspec.Struct, frozen=True, gc=False):
    message: _Message
    finish_reason: Any = None


class _Usage(msgspec.Struct, frozen=True, gc=False):
    prompt_tokens: Any = None
    completion_tokens: Any = None


class _Completion(msgspec.Struct, frozen=True, gc=False):
    choices: list[_Choice]
    model: Any = None
    usage: _Usage | None = None
    system_fingerprint: Any = None


#: The ``system_fingerprint`` of every answer of iterrefine's simulator (and of the scripted
#: endpoints of :mod:`iterrefine.testing`): what marks output as simulated.
SIMULATOR_FINGERPRINT = "iterrefine-simulator"


encode_body = msgspec.json.Encoder().encode
decode_completion = msgspec.json.Decoder(_Completion).decode


def chat_body(config: LLMRoleConfig, messages: list[dict[str, str]], limit: int,
              form: dict[str, Any] | None, options: ChatOptions | None) -> dict[str, Any]:
    """A chat request's body: the role's sampling settings with the task's options."""
    body: dict[str, Any] = {
        "model": config.model,
        "messages": messages,
        "temperature": config.temperature,
        # Never 0: llama.cpp's server reads it as "no limit".
        "max_tokens": max(1, limit),
    }
    if form is not None:
        body["response_format"] = form
    if options is not None and options.stop:
        body["stop"] = list(options.stop)
    penalty = config.frequency_penalty
    if options is not None and options.frequency_penalty is not None:
        penalty = max(penalty or 0.0, options.frequency_penalty)
    if penalty is not None and (options is None or options.penalize_repeats):
        body["frequency_penalty"] = penalty
    if config.loop_guard == "stream":
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def estimate_tokens(messages: list[dict[str, str]], max_tokens: int) -> int:
    """Pre-call estimate for the tokens/min bucket: prompt chars / 4 + the completion budget."""
    return sum(len(m.get("content", "")) for m in messages) // 4 + max_tokens


@functools.cache
def _defaulttls_context() -> ssl.SSLContext:
    """httpx's own default context, built once per process and shared by every role."""
    return httpx2.create_ssl_context()


def tls_context(base_url: str) -> ssl.SSLContext:
    """The TLS context for an endpoint; loading the CA bundle costs ~0.13 s of CPU each time.

    A plain ``http://`` endpoint never uses it: it gets a context with no CA loaded,
    which refuses any certificate, so a redirect to ``https://`` fails closed.
    """
    if base_url.lower().startswith("http://"):
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, and trusts nothing
    return _defaulttls_context()


def build_http_client(config: LLMRoleConfig) -> httpx2.AsyncClient:
    """openai's aiohttp transport, with a pool sized to the role's concurrency.

    It needs markedly less CPU per request than httpx2's own pool (see the docstring of
    :mod:`iterrefine.llm.client`). When given an ``http_client``, openai uses it as is,
    with httpx2's pool defaults (100 connections), not openai's; either would cap a role
    running a few hundred requests at once, so the pool matches ``max_concurrency``.
    """
    size = max(1, config.max_concurrency)
    return openai.DefaultAioHttpClient(
        verify=tls_context(config.base_url),
        limits=httpx2.Limits(max_connections=size, max_keepalive_connections=size),
        timeout=httpx2.Timeout(config.timeout_s, connect=min(10.0, config.timeout_s)),
        follow_redirects=True,
    )


async def settle_platform(api: openai.AsyncOpenAI) -> None:
    """Work out openai's platform header once, before the client's first burst of calls.

    openai does it on a client's first request, in a worker thread, and until one has
    finished every concurrent first request starts its own: a stage's first batch of a
    few hundred calls queued as many threads running ``platform.platform()`` (which
    reads the interpreter binary) before any request left. ``_platform`` is private;
    ``tests/test_llm_client.py`` checks that this still settles it.
    """
    if getattr(api, "_platform", "") is None:
        from openai._base_client import get_platform

        api._platform = await asyncio.to_thread(get_platform)


def token_count(value: object) -> int:
    """A usage count, or 0 when the server left it out or sent something else."""
    return value if isinstance(value, int) and value >= 0 else 0


def read_completion(
    body: bytes, failures: FailureMap, *, model: str,
) -> tuple[str, ChatResult | IterrefineError]:
    """The answer of a 200 and its metric status, or the error saying why the body is
    not a chat completion (an HTML page from a wrong base_url, JSON of another shape, a
    cut-off body). ``model``: the role's, for a server that names none.
    """
    try:
        completion = decode_completion(body)
    except msgspec.DecodeError as exc:  # ValidationError included
        return failures.invalid_response(str(exc))
    if not completion.choices:
        return failures.empty_response()
    choice = completion.choices[0]
    usage = completion.usage
    served = completion.model
    finish_reason = choice.finish_reason
    return "ok", ChatResult(
        text=choice.message.content or "",
        prompt_tokens=0 if usage is None else token_count(usage.prompt_tokens),
        completion_tokens=0 if usage is None else token_count(usage.completion_tokens),
        model=served if isinstance(served, str) else model,
        seconds=0.0,  # set by LLMClient.chat(), which sees the whole call
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        simulated=completion.system_fingerprint == SIMULATOR_FINGERPRINT,
    )
