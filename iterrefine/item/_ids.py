"""Item ids: the one normalisation every given id goes through (README "Input").

An id is a Kafka message key, a row label in every export and the unit the
exporter de-duplicates on, so it must be unambiguous: two spellings of the same
id must become one string, and anything that is not clearly an id is refused
rather than converted (``true`` is not ``"True"``).
"""

from __future__ import annotations

import re
import unicodedata

import msgspec

from iterrefine.errors import ValidationError


def json_type(value: object) -> str:
    """What a decoded JSON value is called in JSON (error messages speak the input's terms)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


#: Longer ids are refused: an id is a Kafka key and a row label, not content.
MAX_ID_CHARS = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def normalise_id(value: object) -> str:
    """A given id as the string the pipeline keys on, or :class:`ValidationError`.

    Strings are NFC-normalised and stripped of surrounding whitespace; integers
    become their decimal string (so ``77`` and ``"77"`` are the same id). Anything
    else — true/false, floats, null, arrays, objects, a blank or over-long string,
    control characters — is refused rather than guessed at.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, str):
        text = unicodedata.normalize("NFC", value).strip()
    else:
        kind = json_type(value)
        shown = msgspec.json.encode(value)[:40].decode("utf-8", "replace")
        got = kind if value is None else f"{kind} {shown}"
        raise ValidationError(
            f"field 'id' must be a string or an integer, got {got}", reason="invalid_id")
    if not text:
        raise ValidationError("field 'id' is blank", reason="invalid_id")
    if len(text) > MAX_ID_CHARS:
        raise ValidationError(
            f"field 'id' is {len(text)} characters, over the {MAX_ID_CHARS}-character limit",
            reason="invalid_id",
        )
    if _CONTROL.search(text):
        raise ValidationError("field 'id' contains control characters", reason="invalid_id")
    return text
