"""Chat records: OpenAI ``messages`` and ShareGPT ``conversations``, as Alpaca fields.

A single exchange (one user turn, one assistant turn, optionally one system turn
first) maps to ``instruction`` = the user turn, ``input`` = "", ``output`` = the
assistant turn. The system turn is kept aside as ``system``: the pipeline never
shows it to the judge or the refiner and never rewrites it; the ``messages`` and
``sharegpt`` output shapes put it back in front. A conversation with more than
one exchange cannot be refined as one instruction, so it is rejected with reason
``multi_turn`` (it goes to the DLQ, untouched, and can be split and run again).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from iterrefine.errors import ValidationError

Dialect = Literal["messages", "sharegpt"]

#: ShareGPT speaker names, mapped to OpenAI roles (several dialects are in the wild).
_SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
}


def is_chat_record(record: Mapping[str, Any]) -> bool:
    """True for a record in the OpenAI ``messages`` or ShareGPT ``conversations`` shape."""
    return "messages" in record or "conversations" in record


def chat_fields(record: Mapping[str, Any]) -> tuple[dict[str, str], Dialect]:
    """The Alpaca fields of a single-exchange chat record, and its dialect.

    Returns ``({"instruction", "input", "output", "system"}, "messages" | "sharegpt")``;
    raises :class:`ValidationError` (reason ``multi_turn``, ``wrong_type``,
    ``unknown_shape`` or ``empty_field``) otherwise.
    """
    if "messages" in record:
        turns = [_openai_turn(turn) for turn in _turn_list(record["messages"], "messages")]
        dialect: Dialect = "messages"
    else:
        turns = [_sharegpt_turn(turn) for turn in
                 _turn_list(record["conversations"], "conversations")]
        dialect = "sharegpt"
    system = ""
    if turns and turns[0][0] == "system":
        system = turns.pop(0)[1]
    roles = [role for role, _ in turns]
    if roles.count("user") > 1 or roles.count("assistant") > 1:
        raise ValidationError(
            f"a conversation of {len(turns)} turns ({', '.join(roles)}): only one exchange "
            "(user, assistant) can be refined; split it into single-turn records",
            reason="multi_turn",
        )
    if roles != ["user", "assistant"]:
        raise ValidationError(
            "a chat record needs one user turn followed by one assistant turn (after an "
            f"optional system turn); its roles were: {', '.join(roles) or 'none'}",
            reason="unknown_shape",
        )
    instruction, output = turns[0][1], turns[1][1]
    for name, text in (("user turn", instruction), ("assistant turn", output)):
        if not text.strip():
            raise ValidationError(f"the {name} is empty", reason="empty_field")
    return {"instruction": instruction, "input": "", "output": output, "system": system}, dialect


def _turn_list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValidationError(f"field {name!r} must be a list of turns, got "
                              f"{type(value).__name__}", reason="wrong_type")
    return value


def _openai_turn(turn: Any) -> tuple[str, str]:
    if not isinstance(turn, dict):
        raise ValidationError("a message must be an object", reason="wrong_type")
    role = turn.get("role")
    if role not in ("system", "user", "assistant"):
        raise ValidationError(f"unsupported message role {role!r} (system, user, assistant)",
                              reason="unknown_shape")
    return role, _text(turn.get("content"))


def _sharegpt_turn(turn: Any) -> tuple[str, str]:
    if not isinstance(turn, dict):
        raise ValidationError("a conversation turn must be an object", reason="wrong_type")
    speaker = turn.get("from")
    role = _SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
    if role is None:
        raise ValidationError(f"unsupported speaker {speaker!r} (human, gpt, system)",
                              reason="unknown_shape")
    return role, _text(turn.get("value"))


def _text(content: Any) -> str:
    """Message content: a string, or OpenAI's list of parts of which only text is kept."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise ValidationError("only text content parts can be curated",
                                      reason="wrong_type")
            parts.append(part["text"])
        return "\n".join(parts)
    raise ValidationError(f"message content must be text, got {type(content).__name__}",
                          reason="wrong_type")
