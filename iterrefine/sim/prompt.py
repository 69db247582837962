"""Reading a request the way the simulator needs it: task tag, round, fenced data block.

The layout is docs/llm-contract.md's: the system message starts with
``[iterrefine task=<task> prompt=<version>]``; the user message (except the plain
``answer`` request) has trusted header lines (``Round: N``) and one data block between
``<<<DATA nonce>>>`` and ``<<<END DATA nonce>>>`` holding a JSON object. Only
``str.find`` is used, so a big prompt costs one linear scan and no regex backtracking.
"""

from __future__ import annotations

from typing import Any

import msgspec

from iterrefine.tasks.registry import TASKS

#: Task name used for requests without our tag line (a plain chat request).
CHAT_TASK = "chat"

_TAG_PREFIX = "[iterrefine "
_OPEN = "<<<DATA "
_CLOSE = "<<<END DATA "
_MARKER_END = ">>>"
_MAX_NONCE = 64
_ROUND_HEADER = "Round:"

_data_decoder = msgspec.json.Decoder(dict[str, Any])


class PromptError(ValueError):
    """The request does not follow the contract; answered with HTTP 400."""


class SimPrompt(msgspec.Struct, frozen=True):
    task: str
    round: int
    #: The decoded data block (item text); empty for a plain chat request.
    data: dict[str, Any]
    #: The user message outside the data block: the only text a naive judge obeys.
    outside: str


def parse_prompt(system: str, user: str) -> SimPrompt:
    """Split a ``[system, user]`` request into task, round, data and the text outside."""
    task = _task_from_tag(system)
    if task is None:
        return SimPrompt(CHAT_TASK, 1, {"instruction": user, "input": ""}, user)
    start = user.find(_OPEN)
    if start < 0 and task == "answer":
        # The backbone's request is the item itself, unfenced (instruction, blank line,
        # input): the whole message is what it answers.
        return SimPrompt(task, 1, {"instruction": user, "input": ""}, "")
    if start < 0:
        raise PromptError(f"task {task!r}: the user message has no <<<DATA nonce>>> block")
    nonce_end = user.find(_MARKER_END, start + len(_OPEN))
    nonce = user[start + len(_OPEN) : nonce_end] if nonce_end >= 0 else ""
    if not nonce or len(nonce) > _MAX_NONCE or any(c.isspace() for c in nonce):
        raise PromptError(f"task {task!r}: malformed <<<DATA nonce>>> marker")
    close = f"{_CLOSE}{nonce}{_MARKER_END}"
    body_start = nonce_end + len(_MARKER_END)
    end = user.find(close, body_start)
    if end < 0:
        raise PromptError(f"task {task!r}: the data block is not closed by {close}")
    try:
        data = _data_decoder.decode(user[body_start:end].strip())
    except msgspec.DecodeError as exc:
        raise PromptError(f"task {task!r}: the data block is not one JSON object: {exc}") from exc
    header = user[:start]
    outside = header + "\n" + user[end + len(close) :]
    return SimPrompt(task, _round_from_header(header), data, outside)


def _task_from_tag(system: str) -> str | None:
    text = system.lstrip()
    if not text.startswith(_TAG_PREFIX):
        return None
    close = text.find("]")
    if close < 0:
        raise PromptError("the system tag line is not closed by ']'")
    fields = dict(
        part.split("=", 1) for part in text[len(_TAG_PREFIX) : close].split() if "=" in part
    )
    task = fields.get("task")
    if task not in TASKS:
        raise PromptError(f"unknown task in the system tag line: {task!r}")
    return task


def _round_from_header(header: str) -> int:
    for line in header.splitlines():
        stripped = line.strip()
        if stripped.startswith(_ROUND_HEADER):
            value = stripped[len(_ROUND_HEADER) :].strip()
            if value.isdigit():
                return max(1, int(value))
            raise PromptError(f"bad round header: {stripped!r}")
    return 1
