"""Reading model text: thinking blocks, code fences, embedded JSON, labelled lines, numbers.

Task-independent helpers for the parsers in ``_judgements`` and ``_rewrites``. None of
them raises on any input; they return ``None`` or an empty result instead.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from iterrefine.errors import UnparseableOutput

# ---------------------------------------------------------------- thinking, fences


_THINK_OPEN: Final = re.compile(r"<(think|thinking)>", re.IGNORECASE)
_THINK_CLOSE: Final = re.compile(r"</(?:think|thinking)>", re.IGNORECASE)


def prepare(text: str) -> str:
    """Normalise line ends and drop reasoning-model thinking before the answer.

    ``<think>…</think>`` blocks at the start are removed. A ``</think>`` with no opening
    tag (the server's chat template emitted the opening one) drops everything before
    it; a ``<think>`` that never closes (the model ran out of tokens while thinking)
    leaves nothing.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    while (opening := _THINK_OPEN.match(text)) is not None:
        closing = _THINK_CLOSE.search(text, opening.end())
        if closing is None:
            return ""
        text = text[closing.end() :].lstrip()
    closing = _THINK_CLOSE.search(text)
    if closing is not None and _THINK_OPEN.search(text, 0, closing.start()) is None:
        text = text[closing.end() :]
    return text.strip()


_FENCE: Final = re.compile(r"^[ \t]*```[^\n`]*\n(.*?)^[ \t]*```[ \t]*$", re.DOTALL | re.MULTILINE)


def fenced_blocks(text: str) -> list[str]:
    """The contents of the ``` code fences in ``text``, in order."""
    return [m.group(1) for m in _FENCE.finditer(text)]


def unwrap_fence(text: str) -> str:
    """``text`` without a code fence that wraps all of it; otherwise ``text`` unchanged."""
    match = _FENCE.fullmatch(text.strip())
    return match.group(1).strip() if match else text


# ---------------------------------------------------------------- embedded JSON

_JSON_DECODER: Final = json.JSONDecoder()
# Bounds the work on long answers full of braces (code): each start is a full decode.
_MAX_JSON_STARTS: Final = 64


def find_json_object(
    text: str, keys: Iterable[str], *, copied: Callable[[str], bool] | None = None
) -> dict[str, Any] | None:
    """The first JSON object in ``text`` having one of ``keys`` (keys compared lower-cased).

    The object may be the whole text, inside a code fence, or embedded in prose; nested
    objects are found too. Keys of the result are lower-cased and stripped. When the
    whole text is one JSON object (structured output), only that object counts, and an
    embedded object whose text ``copied`` says repeats item text is skipped: item text
    cannot hand the parser its fields.
    """
    found = find_json_span(text, keys, copied=copied)
    return found[0] if found is not None else None


def find_json_span(
    text: str, keys: Iterable[str], *, copied: Callable[[str], bool] | None = None
) -> tuple[dict[str, Any], int, int] | None:
    """Like :func:`find_json_object`, with the object's start and end offsets in ``text``."""
    wanted = frozenset(keys)
    whole = unwrap_fence(text).strip()
    if whole.startswith("{") and whole.endswith("}"):
        try:
            value = json.loads(whole)
        except (ValueError, RecursionError):
            value = None
        if isinstance(value, dict):
            normalised = {str(k).strip().lower(): v for k, v in value.items()}
            if wanted & normalised.keys():
                start = text.find(whole)
                return normalised, max(0, start), max(0, start) + len(whole)
    starts = [m.start() for m in re.finditer(r"\{", text)][:_MAX_JSON_STARTS]
    for start in starts:
        try:
            value, end = _JSON_DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):
            continue
        if copied is not None and "\n" not in text[start:end] and copied(text[start:end]):
            continue
        if isinstance(value, dict):
            normalised = {str(k).strip().lower(): v for k, v in value.items()}
            if wanted & normalised.keys():
                return normalised, start, end
    return None


def json_text(value: Any) -> str | None:
    """A JSON field as text: strings as they are, numbers and bools rendered, else None."""
    if isinstance(value, str):
        return value.strip()
    if value is None:
        return ""
    if isinstance(value, bool | int | float):
        return str(value).lower() if isinstance(value, bool) else str(value)
    return None


# ---------------------------------------------------------------- numbers

_SCALE: Final = re.compile(
    r"[\s*_\[(\"'`]*(\d{1,6}(?:\.\d{1,6})?)(?:\s*(?:/|out\s+of)\s*(\d{1,6}(?:\.\d{1,6})?))?",
    re.IGNORECASE,
)


def _clamp_score(value: float) -> int | None:
    if not math.isfinite(value):
        return None
    return min(10, max(1, math.floor(value + 0.5)))


# ``<10>``, ``<yes>``: the prompt's angle brackets copied around a value. A placeholder
# (``<1-10>``, ``<yes or no>``, ``<A, B or Tie>``) is not a value.
_BRACKETED: Final = re.compile(r"^[\s*_]*<\s*([^<>\n]*?)\s*>(.*)$", re.DOTALL)
_PLACEHOLDER: Final = re.compile(r"\d\s*[-–]\s*\d|\bor\b|,|\.\.\.|…", re.IGNORECASE)
# A range ``7-8`` after the number: ambiguous, or the template's ``1-10`` copied.
_RANGE_AFTER: Final = re.compile(r"\s*[-–]\s*\d")


def unbracket(value: str) -> str | None:
    """``value`` without angle brackets around it; None when they hold a placeholder."""
    match = _BRACKETED.match(value)
    if match is None:
        return value
    inner = match.group(1)
    if not inner or _PLACEHOLDER.search(inner):
        return None
    return inner + match.group(2)


def scale_value(value: Any) -> int | None:
    """A 1–10 score from ``8``, ``"8"``, ``"8/10"``, ``"4/5"``, ``"7.5"``, ``"<8>"``…;
    clamped to 1–10.

    A score out of another maximum is rescaled to ten. Returns None for anything that
    does not start with a number, and for a range (``7-8``, the template's ``<1-10>``).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return _clamp_score(float(value))
    if not isinstance(value, str):
        return None
    unwrapped = unbracket(value)
    if unwrapped is None:
        return None
    value = unwrapped
    match = _SCALE.match(value)
    if match is None or _RANGE_AFTER.match(value, match.end()):
        return None
    number = float(match.group(1))
    if match.group(2) is not None:
        maximum = float(match.group(2))
        if maximum <= 0:
            return None
        number = number * 10.0 / maximum
    return _clamp_score(number)


def scale_value_rest(value: str) -> str:
    """What follows the number in a score field (``"9/10 - good"`` → ``"good"``)."""
    value = unbracket(value) or value
    match = _SCALE.match(value)
    rest = value[match.end() :] if match else value
    return rest.lstrip(" \t*_])\"'`.,;:-–—").strip()


# ---------------------------------------------------------------- labelled sections

# Line decorations real models put before a label: indentation, markdown headings and
# quotes, bullets, list numbers, bold/italic markers.
_PREFIX: Final = (
    r"^[ \t]*(?:\#{1,6}[ \t]*)?(?:>[ \t]*)?(?:[-*+•][ \t]+)?(?:\d{1,2}[.)][ \t]+)?"
    r"(?:\*\*|__|\*|_)?[ \t]*"
)
# ``Score: 9``, ``score - 9``, ``**Score:** 8``, ``**Score**: 8``, ``Score = 8``.
# A dash only separates when a space follows: ``Input-output pairs`` is prose.
_SEPARATOR: Final = r"[ \t]*(?:\*\*|__|\*|_)?[ \t]*(?P<sep>[:=]|[-–—](?=\s|$))?[ \t]*(?:\*\*|__)?"


@dataclass(frozen=True)
class Label:
    """A field label: its canonical key and the regex alternatives that spell it."""

    key: str
    spellings: tuple[str, ...]
    #: ``Score 9`` (no separator) is still this label when the value passes the check.
    value_needs_no_separator: bool = False


@dataclass
class Section:
    """One labelled field: the rest of its label line, then the lines up to the next label."""

    key: str
    lines: list[str] = field(default_factory=list)
    separated: bool = True

    @property
    def head(self) -> str:
        return self.lines[0].strip() if self.lines else ""

    @property
    def text(self) -> str:
        return "\n".join(self.lines).strip()

    @property
    def body(self) -> str:
        """The lines after the label line."""
        return "\n".join(self.lines[1:]).strip()


@dataclass
class Sections:
    preamble: list[str]
    found: list[Section]

    def all(self, key: str) -> list[Section]:
        return [s for s in self.found if s.key == key]

    def first(self, key: str) -> Section | None:
        return next((s for s in self.found if s.key == key), None)


def label_pattern(labels: Iterable[Label]) -> re.Pattern[str]:
    """One regex matching a label line of any of ``labels`` (group ``k<i>`` per label)."""
    alternatives = [f"(?P<k{i}>{'|'.join(label.spellings)})" for i, label in enumerate(labels)]
    return re.compile(
        _PREFIX + "(?:" + "|".join(alternatives) + r")(?![\w/])" + _SEPARATOR + "(?P<rest>.*)$",
        re.IGNORECASE,
    )


def strip_emphasis(value: str) -> str:
    """Drop bold/italic markers wrapping a field value (``**8**``, ``8**``, ``_high_``)."""
    value = value.strip()
    for marker in ("**", "__"):
        if value.startswith(marker) and value.endswith(marker) and len(value) >= 2 * len(marker):
            value = value[len(marker) : -len(marker)].strip()
        elif value.endswith(marker) and value.count(marker) % 2 == 1:
            value = value[: -len(marker)].rstrip()
    return value


#: The key of labels that only end the field before them: labels of the prompt's other
#: parts (its data keys, other tasks' answers) that a model echoes after its answer.
STOP: Final = "_stop"


def split_sections(
    text: str,
    labels: tuple[Label, ...],
    pattern: re.Pattern[str],
    *,
    copied: Callable[[str], bool] | None = None,
) -> Sections:
    """Split ``text`` into labelled sections (plus the unlabelled preamble before them).

    A line is a label line when the label is followed by a separator (``:``, ``-``, …),
    stands alone on its line (a heading), or — for labels that allow it — is followed
    directly by its value (``Score 9``). A line that ``copied`` says repeats item text
    is content, whatever it looks like. A :data:`STOP` label ends the field before it.
    """
    preamble: list[str] = []
    found: list[Section] = []
    for line in text.split("\n"):
        section = _label_line(line, labels, pattern)
        if section is not None and copied is not None and copied(line):
            section = None
        if section is not None:
            found.append(section)
        elif found:
            found[-1].lines.append(line)
        else:
            preamble.append(line)
    return Sections(preamble, found)


def _label_line(line: str, labels: tuple[Label, ...], pattern: re.Pattern[str]) -> Section | None:
    match = pattern.match(line)
    if match is None:
        return None
    index = next(i for i, _ in enumerate(labels) if match.group(f"k{i}") is not None)
    label = labels[index]
    rest = strip_emphasis(match.group("rest"))
    separated = match.group("sep") is not None
    if not separated and rest and not label.value_needs_no_separator:
        return None
    return Section(label.key, [rest], separated)


def inline_to_lines(
    text: str, labels: tuple[Label, ...], *, copied: Callable[[str], bool] | None = None
) -> str:
    """Put each ``Label:`` that follows other text on a line of its own.

    For answers written on one line (``Winner: B. Explanation: …``); only labels
    followed by a colon count, so that prose mentioning a field name stays intact.
    Lines that ``copied`` says repeat item text stay whole.
    """
    spellings = "|".join(s for label in labels for s in label.spellings)
    splitter = re.compile(
        r"(?<=\S)[ \t]*[,;|]?[ \t]+(?=(?:\*\*)?(?:" + spellings + r")(?:\*\*)?[ \t]*:)",
        re.IGNORECASE,
    )
    return "\n".join(
        line if copied is not None and copied(line) else splitter.sub("\n", line)
        for line in text.split("\n")
    )


# ---------------------------------------------------------------- lists


_ITEM: Final = re.compile(r"^[ \t]*(?:\d{1,3}[.)]|[-*+•])[ \t]+(.*)$")


def list_items(text: str, *, limit: int = 10) -> tuple[str, ...]:
    """Items of a numbered or bulleted list; unlisted lines are one item each.

    A wrapped line continues the item above it; after a blank line, text that is not a
    list item ends the list (closing remarks are not suggestions).
    """
    items: list[str] = []
    listed = any(_ITEM.match(line) for line in text.split("\n"))
    blank_before = False
    for line in text.split("\n"):
        if not line.strip():
            blank_before = True
            continue
        match = _ITEM.match(line)
        if match is not None:
            items.append(match.group(1).strip())
        elif listed and items and not blank_before:
            items[-1] = f"{items[-1]} {line.strip()}"
        elif listed and items:
            break
        elif not listed:
            items.append(line.strip())
        blank_before = False
    return tuple(item for item in items if item)[:limit]


def first_key(mapping: Mapping[str, Any], *keys: str) -> Any:
    """The value of the first of ``keys`` present in ``mapping`` (None if none is)."""
    for key in keys:
        if key in mapping:
            return mapping[key]
    return None


def one_line(text: str) -> str:
    """``text`` with its whitespace runs (newlines included) collapsed to single spaces."""
    return " ".join(text.split())


def unparseable(task: str, message: str, raw: str) -> UnparseableOutput:
    """The error for an answer that cannot be read (raised by the caller)."""
    return UnparseableOutput(f"{task} answer: {message}", task=task, raw=raw)
