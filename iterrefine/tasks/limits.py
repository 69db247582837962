"""Token limits that fit the item: what a content task's answer can need, given its data.

The paper gives every refine and align call 4,096 tokens. A revision restates the
instruction and input; an aligned output rewrites the original output (``complete``
mode may extend it): their length follows the item's. A small model given 4,096 tokens
for a one-line answer loops until it has spent them, so with ``fit_max_tokens`` (the
default) the ask layer lowers such a task's limit to what its data can need — never
above the configured limit, and with a floor that leaves room for a reasoning model's
preamble and a JSON wrapper.

Token counts are estimated from characters (:data:`CHARS_PER_TOKEN`, generous: English
runs about four characters a token, so the estimate errs on the long side).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["CHARS_PER_TOKEN", "FLOOR_TOKENS", "fit_aligned", "fit_revision", "tokens_in"]

CHARS_PER_TOKEN: Final = 3.0
#: Room every fitted request keeps whatever the item's size.
FLOOR_TOKENS: Final = 512


def tokens_in(*texts: object) -> int:
    """Estimated tokens of ``texts`` (non-strings count as empty)."""
    chars = sum(len(t) for t in texts if isinstance(t, str))
    return math.ceil(chars / CHARS_PER_TOKEN)


def fit_revision(data: Mapping[str, Any], variant: str | None = None) -> int:
    """Refine: the revised instruction and input, up to three times the original's."""
    return FLOOR_TOKENS + 3 * tokens_in(data.get("instruction"), data.get("input"))


def fit_aligned(data: Mapping[str, Any], variant: str | None = None) -> int:
    """Align: three times the original output (six when ``complete`` extends it)."""
    factor = 6 if variant == "complete" else 3
    floor = 2 * FLOOR_TOKENS if variant == "complete" else FLOOR_TOKENS
    return floor + factor * tokens_in(data.get("original_output"))
