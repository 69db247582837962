"""Recognising a degenerate answer: a small model repeating itself until ``max_tokens``.

SmolLM2-135M and Qwen2.5-0.5B, asked for a one-line answer, often write it and then
repeat a sentence, a list item or a run of newlines until the limit. Paying that limit,
then twice the limit for a re-ask that loops again, buys nothing. Two signs, checked on
the end of the text:

* **a period**: the text ends in at least :data:`MIN_REPEATS` copies of one unit (from
  a single character up to a paragraph) spanning at least :data:`MIN_SPAN` characters
  (:data:`STRUCTURED_MIN_SPAN` in a structured answer, whose bounded fields may repeat a
  sentence harmlessly);
* **counting**: copies of a long passage that differ only in their numbers;
* **recycled phrases**: near-copies (a penalty makes loops vary a word): of the last
  :data:`WINDOW_WORDS` words, at least :data:`RECYCLED_SHARE` start a
  :data:`NGRAM`-word phrase the answer already used.

:func:`loop_cut` returns where to cut so that one copy stays, or None. It is used on a
returned text cut at the limit (:func:`iterrefine.tasks.ask.ask`) and, with
:class:`LoopWatch`, while an answer streams in (``loop_guard = "stream"``), which also
ends a JSON answer once its object closes.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MIN_REPEATS", "MIN_SPAN", "JsonEnd", "LoopWatch", "close_json", "loop_cut"]

#: A unit repeated this many times in a row at the end of the text is a loop...
MIN_REPEATS: Final = 4
#: ...when the copies span at least this many characters (a ``----`` rule is not one).
MIN_SPAN: Final = 200
#: In a structured answer a server enforcing the schema bounds each judge's commentary
#: (``maxLength`` up to 800 characters): SmolLM2 repeats a sentence there and then goes
#: on with the next field. Only a loop longer than any bounded field is cut.
STRUCTURED_MIN_SPAN: Final = 1000
#: A loop that counts (copies that differ only in their numbers) is recognised when a
#: passage at least this long (numbers masked) ends the text in this many copies: a
#: 135M model's counting paragraphs are ~200 characters, so fewer copies fit the limit.
COUNTING_MIN_PERIOD: Final = 100
COUNTING_REPEATS: Final = 2.5
#: How much of the end of the text is searched (a loop shows itself well within it).
TAIL_CHARS: Final = 6000
#: A streaming answer is checked for a loop every this many characters (about a dozen
#: tokens: each check of a reply cut at the limit costs ~0.2 ms, its tokens ~0.25 s on
#: a small CPU model)...
WATCH_EVERY: Final = 50
#: ...or, once the answer is long, every this fraction of it: a 4,096-token answer is
#: checked a few dozen times, not hundreds.
WATCH_SHARE: Final = 16
#: Candidate periods tried per check (occurrences of the text's last characters).
MAX_CANDIDATES: Final = 64
_PROBE: Final = 8

NGRAM: Final = 5
WINDOW_WORDS: Final = 120
STRUCTURED_WINDOW_WORDS: Final = 250
RECYCLED_SHARE: Final = 0.8
_WORD: Final = re.compile(r"\S+")


def _periodic_cut(text: str, min_span: int, *, repeats: float = MIN_REPEATS,
                  min_period: int = 1) -> int | None:
    """Where a text ending in ``repeats`` exact copies of a unit of at least
    ``min_period`` characters should be cut (after the first copy)."""
    offset = max(0, len(text) - TAIL_CHARS)
    tail = text[offset:]
    n = len(tail)
    if n < min_span:
        return None
    probe = tail[-_PROBE:]
    end = n - _PROBE  # search for earlier occurrences of the probe, ending before it
    for _ in range(MAX_CANDIDATES):
        found = tail.rfind(probe, 0, end + _PROBE - 1)
        if found < 0:
            break
        end = found
        period = n - _PROBE - found
        if period <= 0:
            continue
        if period * repeats > n:
            break  # longer units cannot repeat often enough in the tail
        # How far back does ``tail[i] == tail[i + period]`` hold?
        i = n - 1 - period
        while i >= 0 and tail[i] == tail[i + period]:
            i -= 1
        start = i + 1  # the periodic stretch is tail[start:]
        span = n - start
        if span >= max(min_span, repeats * period):
            if period < min_period:
                return None  # a short shape repeated (shorter periods are found first)
            return offset + _at_boundary(tail, start + period, period)
    return None


_BOUNDARY: Final = re.compile(r"\n|[.!?](?=\s)")


def _at_boundary(tail: str, cut: int, period: int) -> int:
    """``cut`` moved on to the end of the line or sentence it falls in, within the second
    copy: the periodic stretch may start mid-sentence (the end of the sentence before the
    loop often matches the end of each copy), and the kept copy should end whole."""
    match = _BOUNDARY.search(tail, cut, cut + period)
    return cut if match is None else match.end()


def _recycled_cut(text: str, window_words: int) -> int | None:
    """Where near-copies begin, when the last words mostly recycle earlier phrases."""
    words = [(m.start(), m.group(0).lower()) for m in _WORD.finditer(text)]
    if len(words) < window_words + NGRAM:
        return None
    seen: set[tuple[str, ...]] = set()
    repeated: list[bool] = []
    for i in range(len(words) - NGRAM + 1):
        gram = tuple(w for _, w in words[i : i + NGRAM])
        repeated.append(gram in seen)
        seen.add(gram)
    window = repeated[-window_words:]
    if sum(window) < RECYCLED_SHARE * len(window):
        return None
    # The loop starts at the first repeated phrase of the longest dense final stretch.
    start = len(repeated) - window_words
    count = sum(window)
    while start > 0 and (count + repeated[start - 1]) >= RECYCLED_SHARE * (
            len(repeated) - start + 1):
        start -= 1
        count += repeated[start]
    while not repeated[start]:
        start += 1
    return words[start][0]


def loop_cut(text: str, *, structured: bool = False) -> int | None:
    """The index to cut ``text`` at if it ends in a loop (one copy kept), else None.

    ``structured``: a JSON answer from a server enforcing the schema, whose bounded
    fields may hold a few repeats harmlessly: only longer loops count.
    """
    min_span = STRUCTURED_MIN_SPAN if structured else MIN_SPAN
    cut = _periodic_cut(text, min_span)
    if cut is None:
        cut = _recycled_cut(text, STRUCTURED_WINDOW_WORDS if structured else WINDOW_WORDS)
    if cut is None:
        cut = _counting_cut(text, min_span)
    return cut


_NUMBER: Final = re.compile(r"\d+")


def _counting_cut(text: str, min_span: int) -> int | None:
    """Where a loop that counts begins: copies of a passage of at least
    :data:`COUNTING_MIN_PERIOD` characters that differ only in their numbers.

    SmolLM2 writes "In 2018, he played … scoring 14 goals in 14 matches. In 2019, …
    15 goals in 15 matches." until the limit. Numbers are masked (each run of digits
    becomes ``#``) and the masked text searched for a period. Only long passages count:
    a table, a counted list or lines of code repeat a short shape with new numbers, and
    that is an answer, not a loop."""
    # Only the tail is searched (as by _periodic_cut): mask no more than that.
    offset = max(0, len(text) - TAIL_CHARS)
    masked: list[str] = []
    where: list[int] = []  # index in ``text`` of each index of the masked tail
    last = offset
    for number in _NUMBER.finditer(text, offset):
        masked += (text[last : number.start()], "#")
        where += range(last, number.start() + 1)
        last = number.end()
    masked.append(text[last:])
    where += range(last, len(text) + 1)
    cut = _periodic_cut("".join(masked), min_span, repeats=COUNTING_REPEATS,
                        min_period=COUNTING_MIN_PERIOD)
    return None if cut is None else where[cut]


class _JsonScan:
    """Where a JSON text stands after each character: inside a string, and which
    objects and arrays are open (their closing characters, innermost last)."""

    def __init__(self) -> None:
        self.open: list[str] = []
        self.in_string = False
        self.escaped = False
        self.opened = False

    def step(self, char: str) -> bool:
        """Read one character; True when it closed the outermost object or array."""
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif char == "\\":
                self.escaped = True
            elif char == '"':
                self.in_string = False
        elif char == '"' and self.opened:
            self.in_string = True
        elif char in "{[" and (self.opened or char == "{"):
            self.open.append("}" if char == "{" else "]")
            self.opened = True
        elif char in "}]" and self.open and char == self.open[-1]:
            self.open.pop()
            return not self.open
        return False


class JsonEnd:
    """Follows streamed text and says when the first top-level JSON object has closed."""

    def __init__(self) -> None:
        self._scan = _JsonScan()
        #: Characters read up to and including the closing brace, once closed.
        self.closed_at: int | None = None
        self._read = 0

    def feed(self, piece: str) -> bool:
        """Read ``piece``; True once the object has closed."""
        if self.closed_at is not None:
            return True
        for index, char in enumerate(piece):
            if self._scan.step(char):
                self.closed_at = self._read + index + 1
                return True
        self._read += len(piece)
        return False


_OPEN_OBJECT: Final = re.compile(r"\s*(?:```[a-zA-Z]*\s*)?\{")


def close_json(text: str) -> str | None:
    """A JSON answer cut short at a loop, completed: the open string, arrays and objects
    closed, so the fields written before the loop (and one copy of the looping one) can
    be read. None when ``text`` does not open with an object, or the object had closed.

    SmolLM2-135M in ``json_object`` mode loops inside a field (``"input_new": "… Sydney.
    … Sydney. …"``): cut after one copy, the answer ends mid-string, and a parser would
    refuse what is a complete revision without its repeats. Whatever the cut leaves
    unreadable (a dangling key) stays unreadable: the caller's parser decides.
    """
    start = _OPEN_OBJECT.match(text)
    if start is None:
        return None
    scan = _JsonScan()
    for char in text[start.end() - 1 :]:
        if scan.step(char):
            return None
    closed = text[:-1] if scan.escaped else text
    if scan.in_string:
        closed += '"'
    closed = closed.rstrip()
    if closed.endswith(","):
        closed = closed[:-1]
    return closed + "".join(reversed(scan.open))


class LoopWatch:
    """Checks a streaming answer for a loop every ``every`` characters (every
    1/:data:`WATCH_SHARE` of the answer once that is longer).

    Each character streamed past a loop's first copy is paid for: checked every 200
    characters, the watch stopped SmolLM2's recorded loops after 70 % of the tokens they
    ran to the limit with; every 50, after 58 % (a guard that knew the loop the moment
    its first copy ended would stop at 42 %)."""

    def __init__(self, every: int = WATCH_EVERY, *, structured: bool = False) -> None:
        self._every = every
        self._structured = structured
        self._next = STRUCTURED_MIN_SPAN if structured else MIN_SPAN
        self._parts: list[str] = []
        self._length = 0

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def feed(self, piece: str) -> int | None:
        """Add ``piece``; the cut index once the text so far ends in a loop."""
        self._parts.append(piece)
        self._length += len(piece)
        if self._length < self._next:
            return None
        self._next = self._length + max(self._every, self._length // WATCH_SHARE)
        text = self.text
        self._parts = [text]
        return loop_cut(text, structured=self._structured)
