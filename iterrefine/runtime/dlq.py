"""Dead-letter records: the original bytes plus headers saying what went wrong."""

from __future__ import annotations

from collections.abc import Sequence

from iterrefine.errors import IterrefineError, UnparseableOutput
from iterrefine.item.model import Item
from iterrefine.item.records import raw_id
from iterrefine.runtime.stage import RecordLike

_MAX_MESSAGE_CHARS = 1000
#: Set by every dead letter; an earlier dead letter's values (a replayed DLQ record) give way.
_OWN_HEADERS = frozenset(
    f"iterrefine.{name}"
    for name in ("stage", "reason", "error", "message", "attempts", "source", "revision",
                 "task", "raw_answer")
)


def dlq_reason(exc: BaseException) -> str:
    if isinstance(exc, IterrefineError):
        return exc.reason
    return "handler_error"


def dlq_key(record: RecordLike) -> bytes:
    """The item id when the producer gave one, else a hash of the bytes (rows need ids)."""
    if record.key:
        return record.key
    return raw_id(record.value or b"").encode()


def dlq_headers(
    record: RecordLike, *, stage: str, exc: BaseException, attempts: int, item: Item | None
) -> list[tuple[str, bytes]]:
    """The original record's headers plus ours (``iterrefine.*``).

    ``revision`` lets the exporter order a dead letter against other results of
    the same item: the decoded item's revision, else the record's timestamp.
    """
    reason = dlq_reason(exc)
    revision = item.revision if item is not None else record.timestamp
    original = [(k, v) for k, v in (record.headers or ()) if k not in _OWN_HEADERS]
    return [*original,
        ("iterrefine.stage", stage.encode()),
        ("iterrefine.reason", reason.encode()),
        ("iterrefine.error", type(exc).__name__.encode()),
        ("iterrefine.message", str(exc)[:_MAX_MESSAGE_CHARS].encode("utf-8", "replace")),
        ("iterrefine.attempts", str(attempts).encode()),
        ("iterrefine.source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ("iterrefine.revision", str(revision).encode()),
        *_answer_headers(exc),
    ]


def _answer_headers(exc: BaseException) -> list[tuple[str, bytes]]:
    """The model's last answer, when the failure was an unreadable one: what to look at
    (and fix the prompt or parser for) is the text itself, not only the parser's verdict."""
    if not isinstance(exc, UnparseableOutput):
        return []
    return [("iterrefine.task", exc.task.encode()),
            ("iterrefine.raw_answer", exc.raw.encode("utf-8", "replace"))]


def headers_dict(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    """Decode the ``iterrefine.*`` headers of a DLQ record (exporter side)."""
    return {
        k.removeprefix("iterrefine."): v.decode("utf-8", "replace")
        for k, v in headers
        if k.startswith("iterrefine.")
    }
