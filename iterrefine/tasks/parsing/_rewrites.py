"""Parsers of the rewriting answers: the backbone's answer, refine (FIR) and align (OA).

Each accepts the JSON-schema form first, then the free-text form, and returns its
answer struct or raises :class:`UnparseableOutput` — never anything else, whatever the
text (a property test pins this).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Final

from iterrefine.tasks.parsing._answers import AlignedAnswer, RevisionAnswer
from iterrefine.tasks.parsing._scaffolding import AnswerContext, copied_check, reject_scaffolding
from iterrefine.tasks.parsing._text import (
    STOP,
    Label,
    fenced_blocks,
    find_json_object,
    find_json_span,
    first_key,
    json_text,
    label_pattern,
    prepare,
    strip_emphasis,
    unparseable,
    unwrap_fence,
)

# ---------------------------------------------------------------- answer (backbone)


def clean_answer(text: str, context: AnswerContext | None = None) -> str:
    """The backbone's answer without thinking blocks and surrounding whitespace."""
    answer = prepare(text)
    if not answer:
        raise unparseable("answer", "empty (or only thinking)", text)
    reject_scaffolding("answer", text, answer, context)
    return answer


# Labels of the prompts' data keys: no answer field is called that, so a line starting
# with one is the model echoing its prompt, and the field before it ends there.
_DATA_KEY_SPELLINGS: Final = (
    r"reference[ \t_]output", r"candidate[ \t_]answer", r"reviewer[ \t_]feedback",
    r"original[ \t_](?:instruction|input|output)", r"revised[ \t_](?:instruction|input)",
)


# ---------------------------------------------------------------- refine

_INSTRUCTION_LABEL: Final = Label(
    "instruction",
    (
        r"instruction[ \t_-]?new",
        r"(?:new|revised|rewritten|refined|improved|updated)[ \t_-]instruction",
        r"instruction",
    ),
)
_INPUT_LABEL: Final = Label(
    "input",
    (
        r"input[ \t_-]?new",
        r"(?:new|revised|rewritten|refined|improved|updated)[ \t_-]input",
        r"input",
    ),
)
# The contract's own labels first: a multi-line input may contain a line "Input: …".
_REVISION_PATTERNS: Final = (
    label_pattern((Label("instruction", (r"instruction_new",)), Label("input", (r"input_new",)))),
    label_pattern((_INSTRUCTION_LABEL, _INPUT_LABEL)),
)
# What ends a revision field besides the other field: the data keys, and the labels of
# the evaluation and review answers, which the refine prompt shows (its ``evaluation``).
_REVISION_STOP: Final = label_pattern((
    Label("instruction", (r"instruction[ \t_-]?new",)),
    Label("input", (r"input[ \t_-]?new",)),
    Label(STOP, (*_DATA_KEY_SPELLINGS, r"score", r"evaluation", r"suggestions",
                 r"winner", r"verdict")),
))
_JSON_INSTRUCTION_KEYS: Final = ("instruction_new", "revised_instruction", "new_instruction")
_JSON_INPUT_KEYS: Final = ("input_new", "revised_input", "new_input")
# Commentary some models append after the revision, once a blank line separates it.
# Only unmistakable sign-offs: a passage in the input may well say "Note that …".
_AFTERWORD: Final = re.compile(
    r"^[ \t#>*_]*(?:(?:explanation|rationale|changes(?:\s+made)?|notes?)[ \t*_]*:"
    r"|(?:i\s+hope|hope\s+this\s+helps|let\s+me\s+know|in\s+this\s+revision"
    r"|this\s+revision|these\s+(?:changes|revisions|edits)"
    r"|i(?:\s+have|'ve)?\s+(?:revised|rewritten|rewrote|made|updated|clarified|added|kept)"
    r"|the\s+revised\s+(?:instruction|input)\s+(?:is|now|adds|makes|clarifies))\b)",
    re.IGNORECASE,
)
_META_PREFIX: Final = re.compile(
    r"^(?:(?:the\s+)?(?:new|revised|rewritten|refined|improved|updated)\s+"
    r"(?:instruction|input)\s*[:\-–—]\s*)+",
    re.IGNORECASE,
)
_EMPTY_INPUT: Final = frozenset(
    {"", "empty", "none", "n/a", "na", "null", "no input", "-", "—", '""', "''", "``"}
)


def _revision_scope(body: str) -> str:
    """The part of the answer holding the revision: a code fence with the labels, if any."""
    for block in fenced_blocks(body):
        if re.search(r"instruction[ \t_-]?new|revised[ \t_-]instruction", block, re.IGNORECASE):
            return block
    return unwrap_fence(body)


Copied = Callable[[str], bool] | None


def _find_label(
    lines: list[str], pattern: re.Pattern[str], group: str, copied: Copied = None
) -> tuple[int, str] | None:
    """The first line labelled ``group`` (``k0`` instruction, ``k1`` input) and its rest.

    A line repeating item text (``copied``) is content, not a label.
    """
    for number, line in enumerate(lines):
        match = pattern.match(line)
        if match is None or match.group(group) is None:
            continue
        if copied is not None and copied(line):
            continue
        if match.group("sep") is not None or not match.group("rest").strip():
            return number, strip_emphasis(match.group("rest"))
    return None


def _field_end(lines: list[str], pattern: re.Pattern[str], copied: Copied) -> int:
    """Where a field ends: the first label line of ``pattern`` not repeating item text."""
    for number, line in enumerate(lines):
        match = pattern.match(line)
        if match is None or (copied is not None and copied(line)):
            continue
        if match.group("sep") is not None or not match.group("rest").strip():
            return number
    return len(lines)


def _drop_afterword(lines: list[str]) -> list[str]:
    """Cut commentary after the last field, and a closing fence left from a wrapper."""
    for number in range(1, len(lines)):
        if not lines[number - 1].strip() and _AFTERWORD.match(lines[number]):
            lines = lines[:number]
            break
    fences = [n for n, line in enumerate(lines) if line.strip().startswith("```")]
    last_text = max((n for n, line in enumerate(lines) if line.strip()), default=-1)
    if len(fences) % 2 == 1 and fences[-1] == last_text:
        lines = lines[: fences[-1]]
    return lines


def _revision_value(lines: list[str]) -> str:
    """A field's text: blank lines around it dropped, indentation inside kept."""
    while lines and not lines[0].strip():
        lines = lines[1:]
    value = "\n".join(lines).rstrip()
    if "\n" not in value:
        value = strip_emphasis(value)
        quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'`"
        if quoted and value[0] not in value[1:-1]:
            value = value[1:-1].strip()
    return _META_PREFIX.sub("", value)


def _empty_placeholder(value: str) -> bool:
    return "\n" not in value and value.strip("*_ ()[]<>.").lower() in _EMPTY_INPUT


def _json_field(value: str | None, copied: Copied) -> str | None:
    """A JSON revision field up to the first label line that ends a labelled field too:
    SmolLM2-135M wrote ``"input_new": "… woodwind instrument.\\nScore: 1\\n\\nEvaluation:
    1.0\\n\\nSuggestions:\\n1. 1.0 …"`` (recorded), which must not become the item's input."""
    if value is None:
        return None
    lines = value.split("\n")
    end = _field_end(lines, _REVISION_STOP, copied)
    return value if end == len(lines) else "\n".join(lines[:end]).rstrip()


def parse_revision(text: str, context: AnswerContext | None = None) -> RevisionAnswer:
    """Read a revision (``instruction_new: …`` / ``input_new: …``, or JSON).

    The input may span several lines and may be empty; ``<empty>``-style placeholders
    mean empty. Both fields must be present: a missing ``input_new`` could mean "empty"
    or "unchanged", and guessing wrong would silently drop or keep the item's input.
    Each field ends at the next label the prompt defines (the other field, a data key,
    the evaluation's ``Score:`` / ``Evaluation:`` / ``Suggestions:``); a line repeating
    the item's text is never a label.
    """
    body = prepare(text)
    reject_scaffolding("refine", text, body, context)
    copied = copied_check(context)
    obj = find_json_object(body, _JSON_INSTRUCTION_KEYS, copied=copied)
    if obj is not None:
        instruction = _json_field(json_text(first_key(obj, *_JSON_INSTRUCTION_KEYS)), copied)
        input_ = _json_field(json_text(first_key(obj, *_JSON_INPUT_KEYS)), copied)
        if instruction and input_ is not None:
            input_ = "" if _empty_placeholder(input_) else input_
            return RevisionAnswer(instruction=_META_PREFIX.sub("", instruction), input=input_)
    lines = _revision_scope(body).split("\n")
    for pattern in _REVISION_PATTERNS:
        found_instruction = _find_label(lines, pattern, "k0", copied)
        if found_instruction is None:
            continue
        after = found_instruction[0] + 1
        found_input = _find_label(lines[after:], pattern, "k1", copied)
        if found_input is None:
            raise unparseable(
                "refine", "no input_new line (write it empty for an empty input)", text
            )
        input_at = after + found_input[0]
        between = lines[after:input_at]
        between = between[: _field_end(between, _REVISION_STOP, copied)]
        instruction = _revision_value([found_instruction[1], *between]).strip()
        rest = lines[input_at + 1 :]
        rest = rest[: _field_end(rest, _REVISION_STOP, copied)]
        input_ = _revision_value(_drop_afterword([found_input[1], *rest]))
        if not instruction:
            raise unparseable("refine", "empty instruction_new", text)
        input_ = "" if _empty_placeholder(input_) else input_
        return RevisionAnswer(instruction=instruction, input=input_)
    raise unparseable("refine", "no instruction_new line", text)


# ---------------------------------------------------------------- align

_OUTPUT_LABEL: Final = (
    Label(
        "output",
        (
            r"(?:aligned|revised|rewritten|new|final|updated)[ \t_-]output",
            r"output[ \t_-]new",
            r"output",
        ),
    ),
)
_OUTPUT_PATTERN: Final = label_pattern(_OUTPUT_LABEL)
# An output is free text that may well hold "Score:" or "Suggestions:" lines of its own:
# only the prompt's unmistakable labels (data keys, the revision's fields) end it.
_OUTPUT_STOP: Final = label_pattern((
    Label(STOP, (*_DATA_KEY_SPELLINGS, r"instruction[ \t_-]new", r"input[ \t_-]new")),
))
_OUTPUT_KEYS: Final = ("output", "aligned_output", "revised_output", "rewritten_output")
# A preface naming the rewrite itself; "Here is a list of fruits:" may be the answer.
_PREFACE: Final = re.compile(
    r"^(?:sure[,!.]?\s*)?(?:here\s+is|here's|below\s+is)\s+(?:the|my)\s+(?:[\w-]+\s+){0,3}?"
    r"(?:output|answer|response|version|rewrite)\b[^\n]*:[ \t]*\n",
    re.IGNORECASE,
)
# The label must open the answer (after at most a short preface): a line "Output: 42"
# deep inside a rewritten answer is content.
_LABEL_WITHIN_LINES: Final = 3
# An embedded {"output": …} counts only with little prose around it: an output that
# explains an API may well contain such an object as content.
_MAX_PROSE_AROUND_JSON: Final = 200
_JSON_OUTPUT_START: Final = re.compile(
    r"\s*\{\s*\"(?:output|aligned_output|revised_output|rewritten_output)\"\s*:", re.IGNORECASE
)


def _labelled_output(body: str, copied: Copied) -> str | None:
    lines = body.split("\n")
    nonblank = [n for n, line in enumerate(lines) if line.strip()][:_LABEL_WITHIN_LINES]
    for number in nonblank:
        if copied is not None and copied(lines[number]):
            continue
        match = _OUTPUT_PATTERN.match(lines[number])
        if match is not None and (match.group("sep") or not match.group("rest").strip()):
            first = strip_emphasis(match.group("rest"))
            rest = lines[number + 1 :]
            return "\n".join([first, *rest[: _field_end(rest, _OUTPUT_STOP, copied)]]).strip()
    return None


def _json_output(body: str, copied: Copied) -> str | None:
    candidate = unwrap_fence(body).strip()
    try:
        whole = json.loads(candidate) if candidate.startswith("{") else None
    except (ValueError, RecursionError):
        whole = None
    if isinstance(whole, dict):
        obj: dict[str, Any] | None = {str(k).strip().lower(): v for k, v in whole.items()}
    else:
        found = find_json_span(body, _OUTPUT_KEYS, copied=copied)
        obj = None
        if found is not None:
            inner, start, end = found
            prose = len(body[:start].strip()) + len(body[end:].strip())
            if len(inner) == 1 and prose <= _MAX_PROSE_AROUND_JSON:
                obj = inner
    value = first_key(obj, *_OUTPUT_KEYS) if obj is not None else None
    return value.strip() if isinstance(value, str) else None


def parse_aligned(text: str, context: AnswerContext | None = None) -> AlignedAnswer:
    """Read an aligned output (``Output:`` then the text, JSON, or the bare text).

    Code fences inside the answer are kept: the output may be code whose fence belongs
    to it.
    """
    body = prepare(text)
    reject_scaffolding("align", text, body, context)
    copied = copied_check(context)
    output = _labelled_output(body, copied)
    if output is None:
        output = _json_output(body, copied)
    if output is None and _JSON_OUTPUT_START.match(unwrap_fence(body)):
        # Structured output cut off mid-object (max_tokens): not an answer to keep.
        raise unparseable("align", "unfinished JSON object", text)
    if output is None:
        output = _PREFACE.sub("", body, count=1).strip()
    if not output:
        raise unparseable("align", "empty output", text)
    return AlignedAnswer(output=output)
