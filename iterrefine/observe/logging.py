"""Structured logging: structlog key-value events, JSON off a TTY, secrets redacted.

Call :func:`configure_logging` once in ``main()``. Code logs with
``structlog.get_logger()``. The runtime describes the message being processed in
:data:`UNIT_OF_WORK` (item_id, stage, round, topic, partition, offset) once per
message task, and every event logged in that task carries those keys. It is one
ContextVar set per message on purpose: structlog's ``bound_contextvars`` costs
tens of microseconds per message, more than the rest of a Kafka hop. Libraries that log through
stdlib :mod:`logging` (aiokafka, openai, httpx) are rendered by the same chain,
at WARNING by default so that their per-fetch chatter stays out.
"""

from __future__ import annotations

import itertools
import logging
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from iterrefine.errors import ConfigError

__all__ = ["REDACTED", "UNIT_OF_WORK", "configure_logging", "merge_unit_of_work", "redact_secrets"]

#: The message a task is processing; each asyncio task has its own copy.
UNIT_OF_WORK: ContextVar[dict[str, Any] | None] = ContextVar(
    "iterrefine_unit_of_work", default=None
)


def merge_unit_of_work(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Add the current unit of work's keys (explicit event keys win)."""
    unit = UNIT_OF_WORK.get()
    if unit:
        for key, value in unit.items():
            event_dict.setdefault(key, value)
    return event_dict

REDACTED = "[redacted]"

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# A key is secret when one of its words is one of these ("x-api-key", "apiKey",
# "access_token", "client_secret"); whole words only, so that token *counts*
# ("prompt_tokens", "max_tokens") stay readable.
_SECRET_WORDS = frozenset(
    {"apikey", "authorization", "password", "passwd", "secret", "token", "credentials"}
)
_KEY_WORD_SPLIT = re.compile(r"[^a-z0-9]+")
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

# Credentials that show up inside values: HTTP auth headers and provider API keys.
_SECRET_VALUE = re.compile(
    r"(?i)\b(?:bearer|basic)\s+[A-Za-z0-9._~+/=-]+"
    r"|(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{8,}"
)


def _is_secret_key(key: str) -> bool:
    words = _KEY_WORD_SPLIT.split(_CAMEL_BOUNDARY.sub("_", key).lower())
    if any(word in _SECRET_WORDS for word in words):
        return True
    # "api_key" / "api-key" / "openai_api_key" arrive as two words.
    return any(pair == ("api", "key") for pair in itertools.pairwise(words))


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET_VALUE.sub(REDACTED, value)
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and _is_secret_key(k) else _redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return type(value)(_redact(v) for v in value)
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Replace secret-named keys and credential-looking values, at any depth, with REDACTED."""
    redacted: EventDict = _redact(event_dict)
    return redacted


_LEAD_KEYS = ("timestamp", "level", "event", "logger")


def _lead_keys_first(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Put when/how bad/what first in a JSON line, so that a human scanning them can read it."""
    lead = {k: event_dict[k] for k in _LEAD_KEYS if k in event_dict}
    return lead | {k: v for k, v in event_dict.items() if k not in lead}


def _level(name: str) -> int:
    try:
        return _LEVELS[name.lower()]
    except KeyError:
        raise ConfigError(
            f"unknown log level {name!r}; use one of {', '.join(_LEVELS)}"
        ) from None


class _StdlibHandler(logging.StreamHandler[TextIO]):
    """Marks the handler we install so that reconfiguring replaces it instead of stacking."""


def configure_logging(
    *,
    json: bool | None = None,
    level: str = "info",
    stdlib_level: str = "warning",
    stream: TextIO | None = None,
) -> None:
    """Set up structlog and stdlib logging for this process.

    ``json=None`` picks JSON lines when ``stream`` (default stderr) is not a TTY
    and the human console renderer when it is. ``level`` filters iterrefine's
    own events, ``stdlib_level`` those of libraries logging through stdlib.
    Safe to call again (tests do); the last call wins.
    """
    out = stream if stream is not None else sys.stderr
    if json is None:
        json = not out.isatty()
    own_level = _level(level)
    lib_level = _level(stdlib_level)

    # Exceptions are formatted to text *before* redaction so that a key quoted in
    # an error message is caught too; that costs Rich's pretty tracebacks on a TTY.
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        merge_unit_of_work,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        structlog.processors.UnicodeDecoder(),
        redact_secrets,
    ]
    render: list[Processor] = (
        [_lead_keys_first, structlog.processors.JSONRenderer()]
        if json
        else [structlog.dev.ConsoleRenderer(colors=out.isatty())]
    )

    structlog.configure(
        processors=[*shared, *render],
        wrapper_class=structlog.make_filtering_bound_logger(own_level),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        # Not cached: module-level loggers must follow a later configure() or
        # capture_logs() in tests; the lookup costs little next to an LLM call.
        cache_logger_on_first_use=False,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            *shared,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
    )
    handler = _StdlibHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(lib_level)
