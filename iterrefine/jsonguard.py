"""Untrusted JSON, checked before a full parser sees it.

A recursive parser (msgspec, like ``json``) raises ``RecursionError`` on a record
nested a thousand levels deep, and quietly keeps the last of two equal keys. One
pass over a record's *tokens* — strings, brackets, colons, commas; numbers and
whitespace are skipped by the regex engine — finds both cheaply: the depth is
bounded while scanning (the scan stops at the first level too deep), and the keys
of every object are compared. The same scan splits a JSON-array file into its
elements' original bytes, so each element is validated (and dead-lettered) on
its own, duplicate keys and all.

The scan trusts only the token boundaries, never the values: a record it accepts
is still parsed by msgspec, which reports anything else that is wrong with it.
Most records never need it: :func:`check_before_parsing` and :func:`duplicate_key`
first count brackets and key ends in C, so validation costs what it did before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import accumulate

import msgspec

from iterrefine.errors import ValidationError

#: Raw records are flat (a few string fields); envelopes nest a handful of levels.
DEFAULT_MAX_JSON_DEPTH = 64

# A complete JSON string (escapes included), or one structural character.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}:,]', re.DOTALL)
_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")


@dataclass(frozen=True, slots=True)
class Shape:
    """What the scan learned: the first duplicated key, if any (reported after parsing)."""

    duplicate_key: str | None = None


def scan(data: bytes, *, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> Shape:
    """Check nesting depth (raising ``too_deep``) and find duplicate object keys.

    Only the depth is raised here: a duplicate key found in bytes that are not JSON
    at all would be a misleading reason, so the caller reports it once msgspec has
    accepted the record.
    """
    # One set of keys per open object, None per open array.
    stack: list[set[bytes] | None] = []
    duplicate: bytes | None = None
    previous: bytes = b""
    for match in _TOKEN.finditer(data):
        token = match.group()
        first = token[0]
        if first in _OPEN:
            if len(stack) >= max_depth:
                raise ValidationError(
                    f"record nests deeper than {max_depth} levels (at byte {match.start()})",
                    reason="too_deep",
                )
            stack.append(set() if first == ord("{") else None)
        elif first in _CLOSE:
            if stack:
                stack.pop()
        elif first == ord(":"):
            keys = stack[-1] if stack else None
            if keys is not None and previous.startswith(b'"') and duplicate is None:
                key = _key_bytes(previous)
                if key in keys:
                    duplicate = key
                keys.add(key)
        previous = token
    if duplicate is None:
        return Shape()
    return Shape(duplicate_key=duplicate.decode("utf-8", "replace"))


# Where a key token ends: every key's closing quote is followed by optional space and ':'.
_KEY_END = re.compile(rb'"\s*:')


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_STEP = [0] * 256
for _open, _close in ((b"[", b"]"), (b"{", b"}")):
    _STEP[_open[0]], _STEP[_close[0]] = 1, -1


def check_before_parsing(data: bytes, *, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> None:
    """Raise ``too_deep`` if ``data`` nests deeper than ``max_depth``; cheap, C-speed loops.

    Fewer brackets than the limit cannot nest past it (most records stop there);
    otherwise strings are cut out, the brackets left are turned into +1/-1 steps,
    and the running sum's maximum is the depth.
    """
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    deepest = max(accumulate(map(_STEP.__getitem__, brackets)), default=0)
    if deepest > max_depth:
        raise ValidationError(f"record nests {deepest} levels deep, deeper than the "
                              f"{max_depth}-level limit", reason="too_deep")


def duplicate_key(data: bytes, decoded: object) -> str | None:
    """The first key that appears twice in one object of ``data`` (``decoded`` is its value).

    A cheap count decides whether the token scan is needed: each key token ends in a
    ``"…:`` match, so when the matches are no more than the keys the parser kept, no
    key can have been dropped. (An escaped quote before a colon inside a string only
    adds matches, which sends the record to the scan, never past it.) Call it after
    :func:`check_before_parsing`, which bounds the depth.
    """
    if len(_KEY_END.findall(data)) <= _count_keys(decoded):
        return None
    return scan(data, max_depth=1 << 30).duplicate_key


def _count_keys(decoded: object) -> int:
    if type(decoded) is dict:
        for value in decoded.values():
            if type(value) is dict or type(value) is list:
                break
        else:
            return len(decoded)  # the usual record: one flat object
    count, pending = 0, [decoded]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            count += len(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return count


def _key_bytes(token: bytes) -> bytes:
    """The key a string token spells (``"\\u0069d"`` and ``"id"`` are the same key)."""
    if b"\\" not in token:
        return token[1:-1]
    try:
        return str(msgspec.json.decode(token)).encode("utf-8", "surrogatepass")
    except msgspec.MsgspecError:
        return token  # msgspec rejects the record anyway


def split_array(data: bytes) -> list[tuple[int, int]] | None:
    """Byte spans of the top-level elements of a JSON array, or None if ``data`` is not one.

    "Not one" means the brackets do not close exactly at the end (trailing data, a
    JSON-lines file whose first line is an array, a truncated file). Elements are
    not parsed here: a broken element is that element's error, found later.
    """
    start = len(data) - len(data.lstrip())
    if data[start:start + 1] != b"[":
        return None
    spans: list[tuple[int, int]] = []
    depth = 0
    element_start = start + 1
    end = -1
    for match in _TOKEN.finditer(data, start):
        first = match.group()[0]
        if first in _OPEN:
            depth += 1
        elif first in _CLOSE:
            depth -= 1
            if depth == 0:
                _add_span(data, spans, element_start, match.start())
                end = match.end()
                break
        elif first == ord(",") and depth == 1:
            _add_span(data, spans, element_start, match.start())
            element_start = match.end()
    if end < 0 or data[end:].strip():
        return None
    return spans


def _add_span(data: bytes, spans: list[tuple[int, int]], start: int, end: int) -> None:
    piece = data[start:end]
    if piece.strip():
        left = start + len(piece) - len(piece.lstrip())
        right = end - (len(piece) - len(piece.rstrip()))
        spans.append((left, right))
