"""What a parser knows about the request its answer replies to, to keep prompt text out.

Two jobs, both about text that came from the prompt rather than from the model:

* An answer that reproduces the prompt's scaffolding — the data-block markers, the
  request's nonce, a JSON dump of the data block, or (for answers that become item
  content: the backbone's answer, a revision, an aligned output) sentences of the
  instructions — is unreadable (:func:`reject_scaffolding`): the ask layer re-asks, then the stage's
  policy decides. Copying it into the data would be worse than either.
* Item text cannot steer a parser: a line of the answer that copies a line of the
  item (:meth:`AnswerContext.copied`) is content, never a field label. So an item
  whose text carries ``input_new: evil`` or ``Winner: A`` lines changes nothing when
  the model echoes it.

Scaffolding is told apart from content by where it came from: text the item itself
carries (an item quoting ``<<<END DATA …>>>`` to try to close the fence, JSON with our
key names, a sentence that happens to match an instruction) is content wherever the
model repeats it, so only markers, keys and sentences the *prompt* added count
(:attr:`AnswerContext.item_markers` and the filtered keys and sentences).

Without a context (a parser called on bare text) only the fixed markers are checked.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from iterrefine.tasks.parsing._text import unparseable

_MARKER: Final = re.compile(r"<<<\s*(?:end\s+)?data\b", re.IGNORECASE)
#: A marker and the word after it (the nonce, or what an item put there), to compare.
_MARKER_FRAGMENT: Final = re.compile(r"<<<\s*(?:end\s+)?data\b(?:[ \t]+[^\s<>]{1,64})?",
                                     re.IGNORECASE)
# Decorations that do not make a line the model's own: emphasis, headings, quotes, bullets.
_DECORATION: Final = re.compile(r"[*`#>]+|^[ \t]*(?:[-+•]|\d{1,2}[.)])[ \t]+")
_SENTENCE_END: Final = re.compile(r"(?<=[.;:!?])\s+|\n+")
#: Instruction sentences shorter than this are too common to mean an echo.
_MIN_SENTENCE_CHARS: Final = 32
#: Keys of the data block that hold pipeline text (our rendering of earlier answers),
#: not item text: an answer copying them spills scaffolding, so their lines stay labels.
_PIPELINE_KEYS: Final = frozenset({"evaluation", "reviewer_feedback"})
#: Tasks whose answer becomes item content (an answer, a revision, an output). A judge
#: quoting its rubric ("the output covers everything the instruction asks for") in a
#: justification harms nothing, so judgements are not checked for instruction echoes.
_CONTENT_TASKS: Final = frozenset({"answer", "refine", "align"})


def _instruction_text(message: Mapping[str, str]) -> str:
    """The part of a message that is our instructions: a system message, or the header
    of a user message above its data block (an unfenced user message is the item)."""
    content = message.get("content", "")
    if message.get("role") != "user":
        return content
    start = content.find("<<<DATA ")
    return "" if start < 0 else content[:start]


@functools.lru_cache(maxsize=64)
def _sentences(prompt: str) -> tuple[str, ...]:
    """The normalised instruction sentences of a prompt (without its data block); few
    distinct prompts exist (task × round × re-ask), so each is split once."""
    sentences = {normalise_line(s) for s in _SENTENCE_END.split(prompt)}
    return tuple(sorted(s for s in sentences if len(s) >= _MIN_SENTENCE_CHARS))


def normalise_line(line: str) -> str:
    """A line as compared for copying: no decorations, whitespace collapsed, lower case."""
    return " ".join(_DECORATION.sub(" ", line).split()).lower()


def _strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, Mapping):
        for inner_key, inner in value.items():
            yield from _strings(inner, str(inner_key))
    elif isinstance(value, list | tuple):
        for inner in value:
            yield from _strings(inner, key)


def _keys(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            yield str(key)
            yield from _keys(inner)


@dataclass(frozen=True)
class AnswerContext:
    """The request an answer replies to: its nonce, item text, data keys, instructions."""

    nonce: str | None = None
    #: Normalised non-blank lines of the item text, one per line, newline-framed.
    item_lines: str = "\n"
    data_keys: frozenset[str] = frozenset()
    #: Normalised sentences of the system message and the user message's header (those
    #: the item's own text also holds left out).
    instructions: tuple[str, ...] = ()
    #: Data-block markers the item text itself carries (normalised): content, not fence.
    item_markers: frozenset[str] = frozenset()

    @classmethod
    def for_request(
        cls, messages: Sequence[Mapping[str, str]], data: Mapping[str, Any], nonce: str | None
    ) -> AnswerContext:
        """The context of a request built by :func:`iterrefine.tasks.prompts.build_messages`."""
        lines = {
            normalise_line(line)
            for key, text in _strings(data)
            if key not in _PIPELINE_KEYS
            for line in text.splitlines()
        }
        lines.discard("")
        prompt = "\n".join(_instruction_text(m) for m in messages)
        texts = [text for _, text in _strings(data)]
        flat = " ".join(sorted(lines))
        keys = frozenset(_keys(data))
        carried = set().union(*(_quoted_keys(text, keys) for text in texts)) if texts else set()
        return cls(
            nonce=nonce,
            item_lines="\n" + "\n".join(sorted(lines)) + "\n",
            data_keys=keys - carried,
            instructions=tuple(s for s in _sentences(prompt) if s not in flat),
            item_markers=frozenset(m for text in texts for m in _markers(text)),
        )

    def copied(self, line: str) -> bool:
        """Whether ``line`` repeats item text: a whole item line, or two or more words
        of one (word-bounded), so that ``Winner: A`` inside an item line counts too."""
        norm = normalise_line(line)
        if not norm or len(self.item_lines) <= 2:
            return False
        if f"\n{norm}\n" in self.item_lines:
            return True
        if " " not in norm:
            return False
        pattern = r"(?<![\w:])" + re.escape(norm) + r"(?![\w])"
        return any(re.search(pattern, item) for item in self.item_lines.split("\n") if item)


def _markers(text: str) -> list[str]:
    """The data-block markers in ``text``, normalised (case, spacing) for comparison."""
    return [" ".join(m.lower().replace("<<<", "<<< ").split()).replace("<<< ", "<<<")
            for m in _MARKER_FRAGMENT.findall(text)]


def _prompt_markers(text: str, context: AnswerContext | None) -> bool:
    """Whether ``text`` holds a marker the item does not carry itself (a marker the model
    repeats from the item, whole or without its last word, is the item's content)."""
    if not _MARKER.search(text):
        return False
    if context is None or not context.item_markers:
        return True
    carried = context.item_markers
    return any(marker not in carried and not any(c.startswith(marker) for c in carried)
               for marker in _markers(text))


def _quoted_keys(text: str, keys: frozenset[str]) -> set[str]:
    return {key for key in keys if re.search(r'"' + re.escape(key) + r'"\s*:', text)}


def reject_scaffolding(task: str, raw: str, text: str, context: AnswerContext | None) -> None:
    """Raise :class:`UnparseableOutput` if ``text`` reproduces the prompt's scaffolding."""
    if _prompt_markers(text, context):
        raise unparseable(task, "the answer reproduces the data-block markers", raw)
    if context is None:
        return
    lowered = text.lower()
    if context.nonce and context.nonce.lower() in lowered:
        raise unparseable(task, "the answer reproduces the request's nonce", raw)
    if len(_quoted_keys(text, context.data_keys)) >= 2:
        raise unparseable(task, "the answer reproduces the data block (its JSON keys)", raw)
    if task not in _CONTENT_TASKS:
        return
    flat = normalise_line(text.replace("\n", " "))
    for sentence in context.instructions:
        if sentence in flat:
            raise unparseable(task, "the answer reproduces the prompt's instructions", raw)


def copied_check(context: AnswerContext | None) -> Callable[[str], bool] | None:
    """``context.copied``, or None without a context (every label line counts)."""
    return None if context is None else context.copied
