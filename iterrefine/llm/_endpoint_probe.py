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

from iterrefine.llm._failures import FailureMap
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
