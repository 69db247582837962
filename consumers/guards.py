"""FIR — what a revision must not do, checked before anyone pays to review it.

A weak refiner breaks items in ways a weak judge then accepts. Seen on Qwen2.5-0.5B:
a 1,191-character context became the one-line answer ("Tomoaki Komorida was born on
July 10,1981."), and an empty input became the answer. Two cheap structural rules, no
model call, refuse such a revision (the round is lost, as for an unreadable one):

* **the context stays**: an item with an input keeps most of it — at least
  :data:`KEPT_SHARE` of the input's distinct content words appear in the revised
  instruction and input (moving context into the instruction is fine; dropping or
  replacing it is not);
* **the answer stays out**: the revised instruction and input do not bring in the
  reference output — neither the whole output, nor at least :data:`LEAKED_SHARE` of its
  distinct content words (and :data:`LEAKED_MIN` of them) that the original
  instruction and input did not have.

And a revision that changes nothing is no refinement: :func:`unchanged` says so, and
the item is curated as ``unrefined`` with the reason "no change".

Content words: runs of letters and digits of :data:`MIN_WORD` characters or more,
case-folded (short words are mostly function words).
"""

from __future__ import annotations

import re
from typing import Final

KEPT_SHARE: Final = 0.5
LEAKED_SHARE: Final = 0.5
LEAKED_MIN: Final = 3
MIN_WORD: Final = 4
#: Inputs shorter than this carry no context worth guarding word by word.
MIN_CONTEXT_CHARS: Final = 40
#: An output at least this long found verbatim in the revision is a copy.
MIN_COPIED_CHARS: Final = 20

_WORD: Final = re.compile(rf"\w{{{MIN_WORD},}}")
_SPACE: Final = re.compile(r"\s+")


def _words(text: str) -> set[str]:
    return {word.casefold() for word in _WORD.findall(text)}


def _flat(text: str) -> str:
    return _SPACE.sub(" ", text).strip().casefold()


def unchanged(instruction: str, input: str, revised_instruction: str, revised_input: str,
              ) -> bool:
    """Whether the revision is the original again (whitespace aside)."""
    return (_flat(instruction), _flat(input)) == (_flat(revised_instruction),
                                                  _flat(revised_input))


def revision_problem(
    instruction: str, input: str, output: str, revised_instruction: str, revised_input: str,
) -> str | None:
    """Why the revision of (``instruction``, ``input``) must not be reviewed, or None."""
    revised = f"{revised_instruction}\n{revised_input}"
    context = _words(input)
    if len(input.strip()) >= MIN_CONTEXT_CHARS and context:
        kept = len(context & _words(revised)) / len(context)
        if kept < KEPT_SHARE:
            return (f"it drops the item's input context: {kept:.0%} of the input's words are "
                    f"left in the revision (at least {KEPT_SHARE:.0%} must stay)")
    flat_output = _flat(output)
    original = _flat(f"{instruction}\n{input}")
    if (len(flat_output) >= MIN_COPIED_CHARS and flat_output in _flat(revised)
            and flat_output not in original):
        return "it copies the reference output into the instruction or input"
    answer = _words(output)
    leaked = (answer & _words(revised)) - _words(f"{instruction}\n{input}")
    if answer and len(leaked) >= LEAKED_MIN and len(leaked) / len(answer) >= LEAKED_SHARE:
        return (f"it puts the reference output into the instruction or input: "
                f"{len(leaked)} of the output's {len(answer)} words are new in the revision")
    return None
