"""Cheap questions to an LLM endpoint: is it up, and does it take our key?

Used by ``run``'s preflight (:mod:`iterrefine.app._preflight`) and by an open circuit
(:mod:`iterrefine.llm.circuit`). Each returns ``(metric status, problem)``; the
problem is ``None`` when the endpoint answered in a way that says it works (a 400
to our one-token question still proves the server is there and takes the key).
"""

from __future__ import annotations

import asyncio

import httpx2
import msgspec
import openai

from iterrefine.llm._failures import FailureMap, display_url
from iterrefine.llm.circuit import is_outage

_REQUEST_OPTIONS: openai.RequestOptions = {"security": {"bearer_auth": True}}
_encode = msgspec.json.Encoder().encode


def _timeout_s(failures: FailureMap) -> float:
    return min(10.0, failures.config.timeout_s)


async def probe_models(api: openai.AsyncOpenAI, failures: FailureMap) -> tuple[str, str | None]:
    """``GET /models``: free of tokens; shows a dead server and a rejected key."""
    try:
        async with asyncio.timeout(_timeout_s(failures)):
            await api.get("/models", cast_to=httpx2.Response, options=_REQUEST_OPTIONS)
    except TimeoutError:
        status, error = failures.timeout()
        return status, str(error)
    except openai.APIError as exc:
        status, error = failures.translate(exc, structured=False)
        return status, str(error) if is_outage(status) else None
    return "ok", None


async def served_models(api: openai.AsyncOpenAI, failures: FailureMap) -> list[str] | None:
    """The model ids ``GET /models`` lists, or None when it cannot say (no route, an
    error, an answer of another shape)."""
    try:
        async with asyncio.timeout(_timeout_s(failures)):
            response = await api.get("/models", cast_to=httpx2.Response,
                                     options=_REQUEST_OPTIONS)
        listed = _decode_models(response.content)
    except (TimeoutError, openai.APIError, msgspec.MsgspecError):
        return None
    return [entry.id for entry in listed.data if isinstance(entry.id, str)]


class _Model(msgspec.Struct, frozen=True):
    id: object = None


class _Models(msgspec.Struct, frozen=True):
    data: list[_Model]


_decode_models = msgspec.json.Decoder(_Models).decode


async def probe_model(
    api: openai.AsyncOpenAI, failures: FailureMap, chat_url: str
) -> str | None:
    """Whether the endpoint takes the role's model in a chat call: the problem if it
    answers that the model does not exist (404, or a 400/422 naming the model).

    The smallest request the role sends: one token of a one-line prompt. An outage or
    any other answer is no verdict on the name (None): the endpoint checks report those.
    """
    body = {"model": failures.config.model, "max_tokens": 1,
            "messages": [{"role": "user", "content": "Reply with OK."}]}
    try:
        async with asyncio.timeout(_timeout_s(failures)):
            await api.post(chat_url, cast_to=httpx2.Response, content=_encode(body),
                           options=_REQUEST_OPTIONS)
    except TimeoutError:
        return None
    except openai.APIStatusError as exc:
        named = "model" in exc.message.lower()
        if exc.status_code == 404 or (exc.status_code in (400, 422) and named):
            return failures.redact(exc.message)
        return None
    except openai.APIError:
        return None
    return None


async def model_problem(
    api: openai.AsyncOpenAI, failures: FailureMap, chat_url: str, *, role: str
) -> str | None:
    """Why the endpoint does not serve the role's model, or None when it does (or when
    it cannot tell: an outage is not a verdict on the name)."""
    model = failures.config.model
    listed = await served_models(api, failures)
    if listed is not None and model in listed:
        return None
    refused = await probe_model(api, failures, chat_url)
    if refused is None:
        return None
    offered = f" (it lists: {', '.join(listed[:10])})" if listed else ""
    return (f"LLM role {role!r}: the server at {display_url(failures.config.base_url)} does "
            f"not serve model {model!r}{offered}: {refused}; fix the model name "
            f"(--{role}-model, or model in [llm.{role}])")


async def probe_completion(
    api: openai.AsyncOpenAI, failures: FailureMap, chat_url: str
) -> tuple[str, str | None]:
    """A one-token completion: the call the pipeline makes, so a 5xx there shows."""
    body = {"model": failures.config.model, "max_tokens": 1,
            "messages": [{"role": "user", "content": "Reply with OK."}]}
    try:
        async with asyncio.timeout(_timeout_s(failures)):
            await api.post(chat_url, cast_to=httpx2.Response, content=_encode(body),
                           options=_REQUEST_OPTIONS)
    except TimeoutError:
        status, error = failures.timeout()
        return status, str(error)
    except openai.APIError as exc:
        status, error = failures.translate(exc, structured=False)
        return status, str(error) if is_outage(status) or status == "404" else None
    return "ok", None
