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
from typing import Any, Final, Literal

from iterrefine.tasks.registry import BUILTIN_TASKS, prompt_digest
from iterrefine.tasks.registry import TASKS as TASK_SPECS

__all__ = [
    "PLAIN_TASKS",
    "PROMPT_EDITION",
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

#: The paper's six tasks, for typing (``ask``'s overloads); the registry has them all.
Task = Literal["score", "answer", "evaluate", "refine", "review", "align"]
#: The built-in tasks (each one entry of :data:`iterrefine.tasks.registry.TASKS`).
TASKS: Final[tuple[str, ...]] = BUILTIN_TASKS
#: Alternative instructions for a task (``<task>.<variant>.md``): same data keys, same
#: answer format, same tag line, so parsers and the simulator need not tell them apart.
VARIANTS: Final[dict[str, tuple[str, ...]]] = {
    name: tuple(spec.variants) for name, spec in TASK_SPECS.items() if spec.variants
}
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
#: Bump when build_messages lays a request out differently (the templates are hashed).
_LAYOUT_REVISION: Final = 2  # 2: plain tasks (answer) send the request unfenced

#: The prompt generation a person names (bump it for a deliberate new generation).
PROMPT_EDITION: Final = "2026.11.28-1"
#: Recorded on every item (``Provenance.prompt_version``): the edition plus a digest of
#: the built-in templates (variants included), data keys and layout, so an edit can
#: never go unversioned and replays can tell the prompt generations apart.
PROMPT_VERSION: Final = (
    f"{PROMPT_EDITION}+"
    f"{prompt_digest(extra=f'{_LAYOUT_REVISION}{_REASK_NOTE}{sorted(PLAIN_TASKS)}')[:10]}"
)


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
    spec = TASK_SPECS[task]
    allowed = spec.required | spec.optional
    missing = spec.required - data.keys()
    unknown = data.keys() - allowed
    if missing or unknown:
        raise ValueError(
            f"data for task {task!r} must have keys {sorted(spec.required)}"
            f" (optional: {sorted(spec.optional)}); missing {sorted(missing)},"
            f" unknown {sorted(unknown)}"
        )
    if spec.rounds:
        if round is None or round < 1:
            raise ValueError(f"task {task!r} needs round >= 1, got {round!r}")
    elif round is not None:
        raise ValueError(f"round applies to tasks with rounds only, not to {task!r}")
    if spec.check is not None:
        spec.check(data, round)


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
    spec = TASK_SPECS.get(task)
    if spec is None:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASK_SPECS)}")
    if variant is not None and variant not in spec.variants:
        raise ValueError(f"task {task!r} has no variant {variant!r}")
    _check_data(task, data, round)
    if nonce is None:
        nonce = secrets.token_hex(4)
    elif not _NONCE.fullmatch(nonce):
        raise ValueError(f"nonce must be 8 lowercase hex characters, got {nonce!r}")
    system_part, user_part = spec.parts if variant is None else spec.variant_parts(variant)
    system = f"{system_tag(task)}\n{system_part}"
    if reask:
        system = f"{system}\n\n{_REASK_NOTE}"
    if task in PLAIN_TASKS:
        user = plain_request(data["instruction"], data["input"])
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]
    header = [f"Round: {round}"] if spec.rounds else []
    header.append(user_part)
    user = "\n".join(header) + "\n\n" + data_block(data, nonce)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
