"""Raw records into items: the shapes accepted, the checks every record passes, the id.

Everything here treats its input as hostile: a record fails with a
:class:`~iterrefine.errors.ValidationError` naming its reason (README "Input"),
never with anything else.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Mapping
from typing import Any

import msgspec

from iterrefine.errors import ValidationError
from iterrefine.item._chat import chat_fields, is_chat_record
from iterrefine.item._ids import json_type, normalise_id
from iterrefine.item.jsonguard import DEFAULT_MAX_JSON_DEPTH, check_before_parsing, duplicate_key
from iterrefine.item.model import (
    DEFAULT_MAX_RAW_BYTES,
    SCHEMA,
    Item,
    Original,
    Source,
    decode_item,
    undecodable,
)

_any_decoder = msgspec.json.Decoder()

def _normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def stable_id(instruction: str, input: str, output: str) -> str:
    """Content hash of the normalised original: the same record always gets the same id."""
    h = hashlib.sha256()
    for part in (instruction, input, output):
        h.update(_normalise(part).encode())
        h.update(b"\x1f")
    return h.hexdigest()[:24]


def raw_id(data: bytes) -> str:
    """Id for a record too broken to read: a hash of its bytes (so DLQ rows have an id)."""
    return "raw-" + hashlib.sha256(data).hexdigest()[:20]


def _field(record: dict[str, Any], name: str, *, required: bool) -> str:
    value = record.get(name)
    if value is None:
        if required:
            raise ValidationError(f"missing field {name!r}", reason="missing_field")
        return ""
    if not isinstance(value, str):
        raise ValidationError(
            f"field {name!r} must be a string, got {json_type(value)}", reason="wrong_type"
        )
    if required and not value.strip():
        raise ValidationError(f"field {name!r} is empty", reason="empty_field")
    return value


def given_id_of(record: Mapping[str, Any]) -> str | None:
    """The record's own id if it has a valid one, else None (never raises): what a
    record the readers refuse is filed under."""
    if "id" not in record:
        return None
    try:
        return normalise_id(record["id"])
    except ValidationError:
        return None


def original_from_record(record: Any) -> tuple[Original, str | None]:
    """Validate a decoded raw record (Alpaca or Dolly shape); return it and its given id."""
    if not isinstance(record, dict):
        raise ValidationError(
            f"a record must be a JSON object, got {json_type(record)}", reason="not_object"
        )
    given_id = normalise_id(record["id"]) if "id" in record else None
    try:
        return _original(record), given_id
    except ValidationError as exc:
        exc.item_id = given_id
        raise


#: Keys that make a record chat-shaped, and those of the Alpaca and Dolly shapes.
_CHAT_KEYS = ("messages", "conversations")
_FIELD_KEYS = ("instruction", "input", "output", "context", "response")


def _original(record: dict[str, Any]) -> Original:
    # null counts as absent, as everywhere (a table's empty column, a union schema).
    chat = [key for key in _CHAT_KEYS if record.get(key) is not None]
    fields = [key for key in _FIELD_KEYS if record.get(key) is not None]
    if chat and (fields or len(chat) > 1):
        raise ValidationError(
            f"record carries {' and '.join(chat + fields[:2])}: a chat record and "
            "instruction fields (or two chat shapes) at once; keep one shape so no field "
            "is silently ignored",
            reason="ambiguous_shape",
        )
    alpaca = "input" in fields or "output" in fields
    dolly = "response" in fields or "context" in fields
    if alpaca and dolly:
        raise ValidationError(
            "record mixes Alpaca (input/output) and Dolly (context/response) fields; "
            "keep one shape so no field is silently ignored",
            reason="ambiguous_shape",
        )
    if dolly:
        return Original(
            instruction=_field(record, "instruction", required=True),
            input=_field(record, "context", required=False),
            output=_field(record, "response", required=True),
            category=_field(record, "category", required=False) or None,
            format="dolly",
        )
    if "output" in fields or "instruction" in fields:
        return Original(
            instruction=_field(record, "instruction", required=True),
            input=_field(record, "input", required=False),
            output=_field(record, "output", required=True),
            category=_field(record, "category", required=False) or None,
            format="alpaca",
        )
    if is_chat_record(record):
        turns, dialect = chat_fields(record)
        return Original(
            instruction=turns["instruction"], input=turns["input"], output=turns["output"],
            system=turns["system"] or None, format=dialect,
        )
    keys = ", ".join(sorted(map(str, record))[:8]) or "none"
    raise ValidationError(
        "unknown record shape: expected Alpaca (instruction/input/output), Dolly "
        "(instruction/context/response/category), OpenAI messages or ShareGPT "
        f"conversations; keys were: {keys}",
        reason="unknown_shape",
    )


def item_from_raw(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_RAW_BYTES,
    source: Source | None = None,
    revision: int = 0,
    max_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> Item:
    """Validate raw record bytes into a fresh :class:`Item`.

    Raises :class:`ValidationError` (never anything else) for: over the size limit,
    invalid UTF-8, nested too deep, not JSON, duplicate keys, not an object, unknown
    or ambiguous shape, an invalid id, wrong types, missing or empty
    instruction/output. An item envelope is accepted too (replay into scoring): its
    original fields start a fresh item.
    """
    try:
        return _item_from_raw(data, max_bytes=max_bytes, source=source, revision=revision,
                              max_depth=max_depth)
    except ValidationError:
        raise
    except Exception as exc:  # whatever a decoder raises on hostile bytes is that record's error
        raise undecodable(exc) from exc


def _item_from_raw(
    data: bytes, *, max_bytes: int, source: Source | None, revision: int, max_depth: int
) -> Item:
    if len(data) > max_bytes:
        error = ValidationError(
            f"record is {len(data)} bytes, over the {max_bytes}-byte limit "
            "(raise limits.max_item_bytes to accept it)",
            reason="too_large",
        )
        error.item_id = _salvaged_id(data, max_depth=max_depth)
        raise error
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(
            f"record is not valid UTF-8 at byte {exc.start}", reason="invalid_utf8"
        ) from exc
    check_before_parsing(data, max_depth=max_depth)  # msgspec recurses: bound it first
    try:
        record = _any_decoder.decode(data)
    except msgspec.MsgspecError as exc:  # DecodeError, and ValidationError for huge numbers
        raise ValidationError(f"record is not JSON: {exc}", reason="not_json") from exc
    duplicate = duplicate_key(data, record)
    if duplicate is not None:
        raise ValidationError(
            f"key {duplicate!r} appears more than once in an object; JSON parsers "
            "disagree on which one counts, so the record is refused",
            reason="duplicate_key",
        )
    given_id: str | None
    if isinstance(record, dict) and record.get("schema") == SCHEMA:
        envelope = decode_item(data)
        original, given_id = envelope.original, normalise_id(envelope.id)
    else:
        original, given_id = original_from_record(record)
    return new_item(original, item_id=given_id, source=source, revision=revision)


#: A record over the size limit is still read for its id up to this size (one Kafka message).
_SALVAGE_BYTES = 1024 * 1024


def _salvaged_id(data: bytes, *, max_depth: int) -> str | None:
    """The own id of a record refused for its size, if it is otherwise readable JSON."""
    if len(data) > _SALVAGE_BYTES:
        return None
    try:
        check_before_parsing(data, max_depth=max_depth)
        record = _any_decoder.decode(data)
        if not isinstance(record, dict) or duplicate_key(data, record) is not None:
            return None
        return given_id_of(record)
    except Exception:  # any doubt about the bytes: no id, the row is named by its hash
        return None


def new_item(
    original: Original,
    *,
    item_id: str | None = None,
    source: Source | None = None,
    revision: int = 0,
) -> Item:
    return Item(
        id=item_id or stable_id(original.instruction, original.input, original.output),
        revision=revision,
        source=source or Source(),
        original=original,
        instruction=original.instruction,
        input=original.input,
        output=original.output,
    )

