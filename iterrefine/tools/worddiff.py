"""Word-level differences between two texts (difflib over words, whitespace kept).

Used by ``iterrefine show`` (coloured terminal text) and ``iterrefine view``
(``<del>``/``<ins>`` in HTML): a revision is read as the original with words
struck out and words added, which is how a reviewer checks that it kept the
meaning.
"""

from __future__ import annotations

import difflib
import re
from typing import Literal

Op = Literal["equal", "delete", "insert"]
#: Words, runs of whitespace, and single punctuation marks: joined back they are the text.
_TOKENS = re.compile(r"\s+|\w+|[^\w\s]", re.UNICODE)


def tokens(text: str) -> list[str]:
    return _TOKENS.findall(text)


def word_diff(before: str, after: str) -> list[tuple[Op, str]]:
    """Pieces that rebuild ``before`` (equal + delete) and ``after`` (equal + insert)."""
    old, new = tokens(before), tokens(after)
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    pieces: list[tuple[Op, str]] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            pieces.append(("equal", "".join(old[i1:i2])))
            continue
        if i2 > i1:
            pieces.append(("delete", "".join(old[i1:i2])))
        if j2 > j1:
            pieces.append(("insert", "".join(new[j1:j2])))
    return pieces


def similarity(before: str, after: str) -> float:
    """Share of words kept, 0–1 (1 = unchanged)."""
    return difflib.SequenceMatcher(a=tokens(before), b=tokens(after), autojunk=False).ratio()
