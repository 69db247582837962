"""Prompt templates (package data) and the message builder of docs/llm-contract.md.

Every request is ``[system, user]``:

* system = the tag line ``[iterrefine task=<task> prompt=<PROMPT_VERSION>]`` and the
  task's instructions (``<task>.md``, system part);
* user = trusted header lines (``Round: N`` for refine and review, then the template's
  user part) and the item as ONE JSON object fenced by ``<<<DATA nonce>>>`` /
  ``<<<END DATA nonce>>>`` with a fresh random nonce per request;
* except for ``answer``: the backbone answers the item's instruction (and input) sent
  as a plain user message, as in the paper's evaluate step. It is asked to *do* the
  task, so there is no judge to protect; a fence only made small models talk about the
  fence (SmolLM2-135M answered with the markers and the nonce instead of the task).

Item text is untrusted. It only ever appears inside the JSON object, where a newline is
``\\n``, so it cannot put a line of its own into the message nor close the fence (it
would have to guess the nonce).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from importlib.resources import files
from typing import Any, Final, Literal, get_args

__all__ = [
    "PLAIN_TASKS",
    "PROMPT_VERSION",
    "TASKS",
    "VARIANTS",
    "Task",
    "build_messages",
    "data_block",
    "evaluation_text",
    "plain_request",
    "system_tag",
]

#: Recorded on every item (``Provenance.prompt_version``); bump it whenever a template
#: or the rendering below changes, so that replays can tell the prompt generations apart.
PROMPT_VERSION: Final = "2026.11.28-1"

Task = Literal["score", "answer", "evaluate", "refine", "review", "align"]
TASKS: Final[tuple[Task, ...]] = get_args(Task)
#: Alternative instructions for a task (``<task>.<variant>.md``): same data keys, same
#: answer format, same tag line, so parsers and the simulator need not tell them apart.
VARIANTS: Final[dict[str, tuple[str, ...]]] = {"align": ("complete",)}

# The data keys of each task (docs/llm-contract.md): required, then optional.
_REQUIRED_KEYS: Final[dict[str, frozenset[str]]] = {
    "score": frozenset({"instruction", "input", "output"}),
    "answer": frozenset({"instruction", "input"}),
    "evaluate": frozenset({"instruction", "input", "reference_output", "candidate_answer"}),
    "refine": frozenset(
        {"instruction", "input", "reference_output", "backbone_answer", "evaluation"}
    ),
    "review": frozenset({"A", "B"}),
    "align": frozenset(
        {
            "original_instruction",
            "original_input",
            "original_output",
            "revised_instruction",
            "revised_input",
        }
    ),
}
_OPTIONAL_KEYS: Final[dict[str, frozenset[str]]] = {"refine": frozenset({"feedback_set"})}
_REVIEW_SIDE_KEYS: Final = frozenset({"instruction", "input", "answer"})
_ROUND_TASKS: Final = frozenset({"refine", "review"})
#: Tasks whose user message is the item's request itself, unfenced.
PLAIN_TASKS: Final = frozenset({"answer"})

_NONCE = re.compile(r"[0-9a-f]{8}")
# json.dumps leaves these unescaped with ensure_ascii=False, yet str.splitlines() (and
# some renderers) break lines on them; escaping keeps every item on the block's one line.
_LINE_BREAKS_JSON_KEEPS: Final = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}

_REASK_NOTE: Final = (
    "Note: your previous reply to this request could not be read. Reply again, exactly in "
    "the format given above, with every field present and nothing else."
)


def _load_templates() -> dict[str, tuple[str, str]]:
    """Read every ``<task>.md`` once: (system part, user part)."""
    templates: dict[str, tuple[str, str]] = {}
    package = files(__name__)
    names = [*TASKS, *(f"{task}.{v}" for task, variants in VARIANTS.items() for v in variants)]
    for task in names:
        text = package.joinpath(f"{task}.md").read_text(encoding="utf-8")
        _, found_system, rest = text.partition("<!-- system -->\n")
        system, found_user, user = rest.partition("<!-- user -->\n")
        if not (found_system and found_user):
            raise RuntimeError(f"prompt template {task}.md lacks a system or user marker")
        templates[task] = (system.strip(), user.strip())
    return templates


_TEMPLATES: Final = _load_templates()


def system_tag(task: str) -> str:
    """The first line of every system message; the simulator reads the task from it."""
    return f"[iterrefine task={task} prompt={PROMPT_VERSION}]"


def data_block(data: Mapping[str, Any], nonce: str) -> str:
    """The fenced data block: one JSON line between nonce-tagged markers."""
    payload = json.dumps(data, ensure_ascii=False)
    for char, escaped in _LINE_BREAKS_JSON_KEEPS.items():
        payload = payload.replace(char, escaped)
    return f"<<<DATA {nonce}>>>\n{payload}\n<<<END DATA {nonce}>>>"


def plain_request(instruction: str, input: str) -> str:
    """An instruction and its input as one plain user message (blank line between)."""
    return f"{instruction.strip()}\n\n{input.strip()}" if input.strip() else instruction.strip()


def evaluation_text(score: int, evaluation: str, suggestions: Sequence[str]) -> str:
    """The ``evaluation`` value of a refine request, in the evaluate answer's own format."""
    lines = [f"Score: {score}", "", f"Evaluation: {evaluation.strip()}"]
    if suggestions:
        lines += ["", "Suggestions:"]
        lines += [f"{n}. {text.strip()}" for n, text in enumerate(suggestions, start=1)]
    return "\n".join(lines)


def _check_data(task: str, data: Mapping[str, Any], round: int | None) -> None:
    required = _REQUIRED_KEYS[task]
    allowed = required | _OPTIONAL_KEYS.get(task, frozenset())
    missing = required - data.keys()
    unknown = data.keys() - allowed
    if missing or unknown:
        raise ValueError(
            f"data for task {task!r} must have keys {sorted(required)}"
            f" (optional: {sorted(allowed - required)}); missing {sorted(missing)},"
            f" unknown {sorted(unknown)}"
        )
    if task == "review":
        for side in ("A", "B"):
            value = data[side]
            if not isinstance(value, Mapping) or set(value) != _REVIEW_SIDE_KEYS:
                keys = sorted(_REVIEW_SIDE_KEYS)
                raise ValueError(f"review side {side} must have exactly the keys {keys}")
    if task in _ROUND_TASKS:
        if round is None or round < 1:
            raise ValueError(f"task {task!r} needs round >= 1, got {round!r}")
    elif round is not None:
        raise ValueError(f"round applies to refine and review only, not to {task!r}")
    if task == "refine" and "feedback_set" in data:
        if round == 1:
            raise ValueError("feedback_set only exists from round 2 on")
        notes = data["feedback_set"]
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise ValueError("feedback_set must be a list of strings, oldest first")


def build_messages(
    task: str,
    data: dict[str, Any],
    *,
    round: int | None = None,
    nonce: str | None = None,
    reask: bool = False,
    variant: str | None = None,
) -> list[dict[str, str]]:
    """Render the ``[system, user]`` messages of one request for ``task``.

    ``data`` holds the task's keys (docs/llm-contract.md); ``round`` is required for
    refine and review and rejected otherwise. ``nonce`` (8 lowercase hex characters) is
    for tests; by default every call draws a fresh one. ``reask`` appends a fixed note to
    the system message when a previous answer could not be parsed: an identical request
    at temperature 0 would likely get the identical unreadable answer. ``variant`` picks
    one of the task's alternative instructions (:data:`VARIANTS`).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if variant is not None and variant not in VARIANTS.get(task, ()):
        raise ValueError(f"task {task!r} has no variant {variant!r}")
    _check_data(task, data, round)
    if nonce is None:
        nonce = secrets.token_hex(4)
    elif not _NONCE.fullmatch(nonce):
        raise ValueError(f"nonce must be 8 lowercase hex characters, got {nonce!r}")
    system_part, user_part = _TEMPLATES[task if variant is None else f"{task}.{variant}"]
    system = f"{system_tag(task)}\n{system_part}"
    if reask:
        system = f"{system}\n\n{_REASK_NOTE}"
    if task in PLAIN_TASKS:
        user = plain_request(data["instruction"], data["input"])
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]
    header = [f"Round: {round}"] if task in _ROUND_TASKS else []
    header.append(user_part)
    user = "\n".join(header) + "\n\n" + data_block(data, nonce)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
