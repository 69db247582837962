"""Structured output: the request forms endpoints understand, and a probe that picks one.

Servers disagree on how a JSON schema is asked for:

* OpenAI and vLLM: ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``;
* llama.cpp's servers: ``{"type": "json_object", "schema": {...}}`` (llama-cpp-python
  answers the OpenAI form with HTTP 500);
* many others: neither (free text, read by the tolerant parsers).

A role's ``structured_output`` names its dialect, or ``auto``. For ``auto``,
:func:`probe_dialect` sends at most two tiny requests (32 tokens) — "Say hello." with a
schema that only allows ``{"probe": "ok"}`` — first in the OpenAI form, then in the
llama.cpp form; a form counts where the answer *is* that JSON (a server that accepts
the field but does not enforce it answers "Hello!" and is not taken for one that does),
and the llama.cpp form wins where both count (it keeps the schema's length bounds).
No usable answer to either means ``off``. A probe that cannot reach the server decides
nothing (``None``): the next structured call probes again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, Final

import httpx2
import openai
import structlog

from iterrefine.config import Dialect, StructuredOutput

log = structlog.get_logger("iterrefine.llm")

#: The dialects tried by the probe, in order; the last one enforced is taken.
PROBE_ORDER: Final[tuple[Dialect, ...]] = ("json_schema", "json_object")
PROBE_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"probe": {"type": "string", "enum": ["ok"]}},
    "required": ["probe"],
    "additionalProperties": False,
}
PROBE_MAX_TOKENS: Final = 32


def configured(value: StructuredOutput | bool) -> StructuredOutput:
    """A role's setting, with the ``True``/``False`` of older configs read as dialects."""
    if value is True:
        return "json_schema"
    if value is False:
        return "off"
    return value


#: Length bounds llama.cpp grammars enforce but OpenAI's strict mode does not accept.
_LENGTH_KEYS: Final = frozenset({"maxLength", "minLength", "maxItems", "minItems"})


def without_length_bounds(schema: Any) -> Any:
    """``schema`` without ``maxLength``/``maxItems``-style keys, at every depth."""
    if isinstance(schema, dict):
        return {k: without_length_bounds(v) for k, v in schema.items() if k not in _LENGTH_KEYS}
    if isinstance(schema, list):
        return [without_length_bounds(v) for v in schema]
    return schema


def response_format(dialect: Dialect, name: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The ``response_format`` body field asking for ``schema`` in ``dialect`` (None: off)."""
    if dialect == "json_schema":
        return {"type": "json_schema", "json_schema": {
            "name": name, "schema": without_length_bounds(schema), "strict": True}}
    if dialect == "json_object":
        return {"type": "json_object", "schema": schema}
    return None


def probe_body(model: str, dialect: Dialect) -> dict[str, Any]:
    """The probe request of one dialect."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "temperature": 0.0,
        "max_tokens": PROBE_MAX_TOKENS,
        "response_format": response_format(dialect, "iterrefine_probe", PROBE_SCHEMA),
    }


#: The probe's answer without whitespace, and the same cut before its closing brace.
_PROBE_ANSWERS: Final = frozenset({'{"probe":"ok"}', '{"probe":"ok"'})


def enforced(answer: str) -> bool:
    """Whether a probe answer is the only JSON the schema allows.

    A grammar lets a small model pad the object with whitespace (SmolLM2-135M on
    llama.cpp's server: ``{\n    "probe"\n\n:\n\n"ok"`` — 16 tokens, cut before the
    brace); that answer is still the schema's and nothing else's, so it counts.
    """
    try:
        value = json.loads(answer)
    except ValueError:
        return "".join(answer.split()) in _PROBE_ANSWERS
    return bool(value == {"probe": "ok"})


async def post_probe(
    api: openai.AsyncOpenAI, url: str, content: bytes, *, options: openai.RequestOptions,
    timeout_s: float,
) -> tuple[int, str] | None:
    """POST one encoded probe: (status, answer text), or None if the server was not reached."""
    try:
        async with asyncio.timeout(timeout_s):
            response = await api.post(url, cast_to=httpx2.Response, content=content,
                                      options=options)
    except openai.APIStatusError as exc:
        return exc.status_code, ""
    except (TimeoutError, openai.APIError):
        return None
    try:
        choices = json.loads(response.content).get("choices") or [{}]
        return 200, str(choices[0].get("message", {}).get("content") or "")
    except (ValueError, AttributeError, TypeError, IndexError):
        return 200, ""  # not a chat completion: no dialect is enforced here


#: Sends one probe body; returns (HTTP status, answer text), or None when the server
#: could not be reached (connection refused, timeout).
ProbeSend = Callable[[dict[str, Any]], Awaitable[tuple[int, str] | None]]

# Statuses that say nothing about the dialect: auth, wrong model, overload.
_INCONCLUSIVE: Final = frozenset({401, 403, 404, 408, 429, 502, 503, 504})


async def probe_dialect(send: ProbeSend, *, role: str, model: str) -> Dialect | None:
    """``json_object`` where the endpoint enforces it, else ``json_schema`` where it does,
    ``off`` if neither, None if it cannot tell.

    Both forms are probed: a server that enforces both (llama.cpp's own server) gets
    ``json_object``, whose schema keeps the ``maxLength`` bounds the ``json_schema`` form
    drops for OpenAI's strict mode — without them SmolLM2-135M ran the score answer's
    ``reason`` on until the loop guard cut it, on every item. A server whose
    ``json_object`` mode ignores the schema (OpenAI's has none) keeps ``json_schema``.
    """
    found: Dialect | None = None
    for dialect in PROBE_ORDER:
        reply = await send(probe_body(model, dialect))
        status = None if reply is None else reply[0]
        if status is None or status in _INCONCLUSIVE:
            log.warning("llm_structured_output_probe_failed", role=role, dialect=dialect,
                        **({"error": "unreachable"} if status is None else {"status": status}))
            if found is None:
                return None
            break  # what was found enforced stays so
        if status == 200 and reply is not None and enforced(reply[1]):
            found = dialect
    chosen: Dialect = found or "off"
    log.info("llm_structured_output", role=role, dialect=chosen, source="probe")
    return chosen
