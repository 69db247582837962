"""Structured logging: JSON lines, bound work context, and no secrets in the output."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from iterrefine.errors import ConfigError
from iterrefine.observe.logging import REDACTED, configure_logging, redact_secrets

pytestmark = pytest.mark.unit

PLANTED_KEY = "sk-proj-PLANTEDd0n0tl0g9f8e7d6c5b4a"
PLANTED_BEARER = "Bearer eyJhbGciOiJIUzI1NiJ9.PLANTED.signature"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def out() -> io.StringIO:
    return io.StringIO()


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line]


def test_planted_secrets_never_reach_json_output(out: io.StringIO) -> None:
    """A planted API key, in a secret-named key, a header and free text, is not rendered."""
    configure_logging(json=True, stream=out)
    log = structlog.get_logger()
    log.info(
        "llm request",
        api_key=PLANTED_KEY,
        headers={"Authorization": PLANTED_BEARER, "Content-Type": "application/json"},
        OPENAI_API_KEY=PLANTED_KEY,
        client_secret="hunter2-PLANTED",
        note=f"retrying with key {PLANTED_KEY}",
    )
    text = out.getvalue()
    assert "PLANTED" not in text
    (event,) = _lines(out)
    assert event["api_key"] == REDACTED
    assert event["headers"] == {"Authorization": REDACTED, "Content-Type": "application/json"}
    assert event["note"] == f"retrying with key {REDACTED}"


def test_planted_secrets_never_reach_console_output(out: io.StringIO) -> None:
    """The human console renderer redacts exactly like the JSON one."""
    configure_logging(json=False, stream=out)
    structlog.get_logger().warning(
        "auth failed", authorization=PLANTED_BEARER, detail=f"header was {PLANTED_BEARER}"
    )
    text = out.getvalue()
    assert "auth failed" in text
    assert "PLANTED" not in text
    assert REDACTED in text


def test_secret_in_exception_message_is_redacted(out: io.StringIO) -> None:
    """A key quoted in an exception message is redacted in the rendered traceback."""
    configure_logging(json=True, stream=out)
    try:
        raise PermissionError(f"Incorrect API key provided: {PLANTED_KEY}")
    except PermissionError:
        structlog.get_logger().exception("llm call failed")
    text = out.getvalue()
    assert "PermissionError" in text
    # The source line of the raise names the constant; the key itself must not show.
    assert PLANTED_KEY not in text
    assert "d0n0tl0g" not in text


def test_stdlib_records_are_redacted_and_filtered(out: io.StringIO) -> None:
    """aiokafka-style stdlib records render as JSON, below WARNING dropped, secrets redacted."""
    configure_logging(json=True, stream=out)
    kafka = logging.getLogger("aiokafka.consumer.group_coordinator")
    kafka.info("Heartbeat ok for group %s", "iterrefine.score")
    kafka.warning("SASL handshake with %s", PLANTED_BEARER, extra={"password": "PLANTED"})
    text = out.getvalue()
    assert "PLANTED" not in text
    (event,) = _lines(out)
    assert event["level"] == "warning"
    assert event["logger"] == "aiokafka.consumer.group_coordinator"
    assert event["password"] == REDACTED


def test_token_counts_are_not_mistaken_for_secrets() -> None:
    """Only whole secret words trigger redaction, so token usage stays readable."""
    event = redact_secrets(
        None, "info", {"event": "usage", "prompt_tokens": 120, "max_tokens": 512, "token": "t0k"}
    )
    assert event == {"event": "usage", "prompt_tokens": 120, "max_tokens": 512, "token": REDACTED}


def test_bound_contextvars_appear_on_every_event_in_the_unit_of_work() -> None:
    """Events inside bound_contextvars carry item_id, stage, round, topic, partition, offset."""
    configure_logging(json=True, stream=io.StringIO())
    log = structlog.get_logger()
    work = {
        "item_id": "it-42",
        "stage": "review",
        "round": 2,
        "topic": "iterrefine.items.review",
        "partition": 3,
        "offset": 1017,
    }
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        with structlog.contextvars.bound_contextvars(**work):
            log.info("verdict", winner="B")
            log.warning("judge tie")
        log.info("idle")
    inside, tie, outside = logs
    assert inside.items() >= {**work, "event": "verdict", "winner": "B"}.items()
    assert tie.items() >= work.items()
    assert "item_id" not in outside


def test_context_reaches_rendered_json(out: io.StringIO) -> None:
    """The configured chain itself merges contextvars into the rendered line."""
    configure_logging(json=True, stream=out)
    with structlog.contextvars.bound_contextvars(item_id="it-7", stage="score", round=0):
        structlog.get_logger().info("scored", score=8)
    (event,) = _lines(out)
    assert list(event)[:3] == ["timestamp", "level", "event"]
    assert event["item_id"] == "it-7"
    assert event["stage"] == "score"
    assert event["round"] == 0


def test_level_filters_own_events(out: io.StringIO) -> None:
    """level='warning' drops iterrefine's info events."""
    configure_logging(json=True, level="warning", stream=out)
    log = structlog.get_logger()
    log.info("dropped")
    log.warning("kept")
    assert [e["event"] for e in _lines(out)] == ["kept"]


def test_non_tty_stream_gets_json_lines() -> None:
    """With json=None a non-TTY stream gets JSON lines."""
    out = io.StringIO()
    configure_logging(stream=out)
    structlog.get_logger().info("hello")
    assert json.loads(out.getvalue())["event"] == "hello"


def test_reconfiguring_does_not_stack_stdlib_handlers(out: io.StringIO) -> None:
    """Calling configure_logging twice emits each stdlib record once."""
    configure_logging(json=True, stream=out)
    configure_logging(json=True, stream=out)
    logging.getLogger("aiokafka").error("broker down")
    assert len(_lines(out)) == 1


def test_unknown_level_is_a_config_error() -> None:
    """A typo in the level is reported with the allowed values."""
    with pytest.raises(ConfigError, match="debug, info"):
        configure_logging(level="verbose", stream=io.StringIO())
