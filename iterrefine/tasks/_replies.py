"""How :func:`iterrefine.tasks.ask.ask` takes a reply: the text to read (without a loop's
repeats), and what it tells the client (how the answer read; whether to cache it)."""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import structlog

from iterrefine.llm.chat import AnswerRecorder, ChatClient, ChatReply
from iterrefine.llm.loops import close_json, loop_cut

log = structlog.get_logger("iterrefine.tasks.ask")


def _finish_reason(reply: ChatReply) -> str | None:
    # Replies of simple test doubles may not carry the attribute; LLMClient's always do.
    reason = getattr(reply, "finish_reason", None)
    return reason if isinstance(reason, str) else None


@runtime_checkable
class RemembersAnswers(Protocol):
    """A client with a response cache (``LLMClient``): it keeps an answer once it is read."""

    def remember(self, reply: object, *, readable: bool) -> None: ...


#: How an answer was read: on the first call, after re-asking, or not at all.
AnswerOutcome = Literal["first_try", "after_reask", "unreadable"]


class Counts:
    """Replies of one ``ask`` cut at the limit, and cut short at a loop."""

    def __init__(self) -> None:
        self.truncated = 0
        self.looped = 0


def without_loop(
    reply: ChatReply, task: str, limit: int | None, counts: Counts, *, json_answer: bool = False,
) -> str | None:
    """The text to read: whole, or without a loop's repeats; None when the answer was cut
    at the limit for another reason (a long answer, worth a re-ask with room).

    ``json_answer``: the task answers with a JSON object, so one cut inside a field is
    closed (:func:`~iterrefine.llm.loops.close_json`) for the parser to read.
    """
    reason = _finish_reason(reply)
    text = reply.text
    if reason == "length":
        cut = loop_cut(text)
        if cut is None:
            return None
        text = text[:cut]
    elif reason != "loop":
        return text
    counts.looped += 1
    closed = close_json(text) if json_answer else None
    log.warning("llm_answer_looped", task=task, max_tokens=limit, kept_chars=len(text),
                json_closed=closed is not None)
    return text if closed is None else closed


def record(client: ChatClient, task: str, outcome: AnswerOutcome, counts: Counts) -> None:
    if isinstance(client, AnswerRecorder):
        if counts.looped:
            client.record_answer(task, outcome, truncated=counts.truncated,
                                 looped=counts.looped)
        else:
            client.record_answer(task, outcome, truncated=counts.truncated)


def remember(client: ChatClient, reply: ChatReply, *, readable: bool) -> None:
    """Tell a caching client whether its answer could be read: only readable ones are kept."""
    if isinstance(client, RemembersAnswers):
        client.remember(reply, readable=readable)
