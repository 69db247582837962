"""Sending a chat request, and reading it streamed with the loop guard on (``loop_guard =
"stream"``).

The answer is assembled from its server-sent events as they arrive. Two things end it
early, and the caller then closes the request, so the server stops generating (llama.cpp
and vLLM cancel a request whose client went away):

* the text so far ends in a loop (:func:`iterrefine.llm.loops.loop_cut`): the answer is
  the text before the repeats, with ``finish_reason = "loop"``;
* a structured answer's JSON object has closed and the server goes on: what follows is
  never part of the answer (a server that takes ``json_object`` without enforcing a
  grammar may go on with whitespace or prose), so after :data:`AFTER_OBJECT_CHUNKS`
  more chunks the answer is the text up to the closing brace.

A loop counts sooner in a ``json_object`` answer than in a ``json_schema`` one: only a
schema the server enforces bounds each field (``maxLength``), where a few repeats are
harmless; under ``json_object`` a field loops until the limit like free text.

A cut answer has no usage from the server: its completion tokens are the content
chunks received (one token each on llama.cpp and vLLM), its prompt tokens the
client's estimate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import aiohttp
import httpx2
import msgspec
import openai
import structlog

from iterrefine.config import LLMRoleConfig
from iterrefine.errors import IterrefineError
from iterrefine.llm._failures import FailureMap
from iterrefine.llm._hedge import Hedging
from iterrefine.llm._wire import ChatResult, read_completion
from iterrefine.llm.loops import JsonEnd, LoopWatch

log = structlog.get_logger("iterrefine.llm")


class _Delta(msgspec.Struct, frozen=True, gc=False):
    content: str | None = None


class _Choice(msgspec.Struct, frozen=True, gc=False):
    delta: _Delta | None = None
    finish_reason: Any = None


class _Usage(msgspec.Struct, frozen=True, gc=False):
    prompt_tokens: Any = None
    completion_tokens: Any = None


class _Chunk(msgspec.Struct, frozen=True, gc=False):
    choices: list[_Choice] = []
    model: Any = None
    usage: _Usage | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode

#: Chunks a server may send after the JSON object closed (whitespace, a closing fence)
#: before the guard closes the request. A server enforcing the schema ends at once and
#: reports its usage.
AFTER_OBJECT_CHUNKS = 16


class Streamed(msgspec.Struct, frozen=True, kw_only=True):
    """A streamed answer as read (maybe cut short)."""

    text: str
    finish_reason: str | None
    #: None when the server sent no usage (a cut stream never has it).
    prompt_tokens: int | None
    completion_tokens: int
    model: str | None
    #: Ended by the guard before the server finished: the request must be closed.
    cut: bool


class StreamError(ValueError):
    """An event that is not a chat-completion chunk."""


def form_kind(form: dict[str, Any] | None) -> str | None:
    """The ``response_format`` type of a request (``json_schema``, ``json_object``), if any."""
    return None if form is None else str(form.get("type"))


async def read_stream(lines: AsyncIterator[str], *, structured: str | None) -> Streamed:
    """Assemble the answer from ``data:`` lines, cutting it at a loop or a closed object."""
    parts: list[str] = []
    watch = LoopWatch(structured=structured == "json_schema")
    json_end = JsonEnd() if structured is not None else None
    chunks = 0
    finish: str | None = None
    usage: _Usage | None = None
    model: str | None = None
    after = 0  # content chunks since the JSON object closed (the closing one included)
    async for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        try:
            chunk = _decode_chunk(data)
        except msgspec.DecodeError as exc:
            raise StreamError(f"a streamed event is not a chat-completion chunk: {exc}") from None
        usage = chunk.usage or usage
        if isinstance(chunk.model, str):
            model = chunk.model
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        if isinstance(choice.finish_reason, str):
            finish = choice.finish_reason
        piece = choice.delta.content if choice.delta is not None else None
        if not piece:
            continue
        chunks += 1
        parts.append(piece)
        if json_end is not None and json_end.feed(piece):
            after += 1
            if after > AFTER_OBJECT_CHUNKS:
                text = "".join(parts)[: json_end.closed_at]
                return Streamed(text=text, finish_reason="stop", prompt_tokens=None,
                                completion_tokens=chunks, model=model, cut=True)
        cut = watch.feed(piece)
        if cut is not None:
            return Streamed(text=watch.text[:cut], finish_reason="loop", prompt_tokens=None,
                            completion_tokens=chunks, model=model, cut=True)
    return Streamed(
        text="".join(parts), finish_reason=finish,
        prompt_tokens=_count(usage.prompt_tokens) if usage is not None else None,
        completion_tokens=(_count(usage.completion_tokens) or chunks) if usage else chunks,
        model=model, cut=False)


def _count(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


async def send_chat(
    api: openai.AsyncOpenAI, url: str, content: bytes, failures: FailureMap,
    config: LLMRoleConfig, *, options: openai.RequestOptions, prompt_estimate: int,
    structured: str | None, hedging: Hedging | None = None,
) -> tuple[str, ChatResult | IterrefineError]:
    """POST one encoded request: its metric status and the answer (read whole, or streamed
    when the role's loop guard is ``stream``) or the error saying why not.

    ``hedging``: a request read whole that the server seems to have lost is sent again
    (:mod:`iterrefine.llm._hedge`); a streamed one is not (its first bytes already came).
    """
    streaming = config.loop_guard == "stream"
    raw: httpx2.Response | None = None
    try:
        # openai's own timeout is per phase (connect, each read); this bounds the
        # whole request, so a server trickling bytes cannot hold a slot forever.
        async with asyncio.timeout(config.timeout_s):
            if not streaming:
                def post() -> Awaitable[httpx2.Response]:
                    return api.post(url, cast_to=httpx2.Response, content=content,
                                    options=options)

                response = await (post() if hedging is None else hedging.run(post))
                return read_completion(response.content, failures, model=config.model)
            # Asked for the raw response, openai hands it over unread (not wrapped in
            # its stream class): the events are read here, without pydantic.
            answer: Any = await api.post(url, cast_to=httpx2.Response, content=content,
                                         options=options, stream=True,
                                         stream_cls=openai.AsyncStream[httpx2.Response])
            raw = answer if isinstance(answer, httpx2.Response) else answer.response
            try:
                streamed = await read_stream(raw.aiter_lines(), structured=structured)
            finally:
                await raw.aclose()  # a cut answer: the server stops generating
    except TimeoutError:
        return failures.timeout()
    except openai.APIError as exc:
        return failures.translate(exc, structured=structured is not None)
    except (httpx2.HTTPError, aiohttp.ClientError) as exc:
        request = raw.request if raw is not None else httpx2.Request("POST", url)
        return failures.translate(openai.APIConnectionError(message=str(exc), request=request),
                                  structured=structured is not None)
    except StreamError as exc:
        return failures.invalid_response(str(exc))
    if streamed.cut:
        log.info("llm_answer_cut_short", reason=streamed.finish_reason,
                 completion_tokens=streamed.completion_tokens)
    return "ok", ChatResult(
        text=streamed.text,
        prompt_tokens=(streamed.prompt_tokens if streamed.prompt_tokens is not None
                       else prompt_estimate),
        completion_tokens=streamed.completion_tokens,
        model=streamed.model or config.model, seconds=0.0,
        finish_reason=streamed.finish_reason)
