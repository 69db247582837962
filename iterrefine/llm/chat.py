"""What a pipeline stage needs of an LLM role: a chat endpoint (protocols only).

Kept apart from :mod:`iterrefine.tasks.ask` so that the pipeline context can name
the type without depending on the tasks (the stages use those, not the context).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import msgspec

__all__ = [
    "AnswerRecorder", "ChatClient", "ChatOptions", "ChatReply", "SimulatorAware", "TruncationHook",
]


class ChatOptions(msgspec.Struct, frozen=True, kw_only=True):
    """A task's generation settings for one call (the role adds its own: temperature,
    penalty value, loop guard)."""

    #: Stop sequences sent with the request.
    stop: tuple[str, ...] = ()
    #: Whether the role's ``frequency_penalty`` applies: not on tasks that must copy item
    #: text faithfully (a penalty pushes a model away from repeating the input it copies).
    penalize_repeats: bool = True
    #: A penalty for this call, above the role's (a re-ask after an answer that looped:
    #: at temperature 0 the same request loops the same way); only where
    #: ``penalize_repeats``.
    frequency_penalty: float | None = None


#: Called with the task's name for every answer cut off at ``max_tokens`` (a metric).
TruncationHook = Callable[[str], None]


class ChatReply(Protocol):
    """What :meth:`ChatClient.chat` returns: the text (and, read when present, the
    ``finish_reason``; see :func:`iterrefine.tasks.ask.ask`)."""

    @property
    def text(self) -> str: ...


class ChatClient(Protocol):
    """The chat endpoint of one role (``iterrefine.llm.LLMClient`` implements it)."""

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        json_schema: dict[str, Any] | None = None,
        schema_name: str = "answer",
        max_tokens: int | None = None,
        options: ChatOptions | None = None,
    ) -> ChatReply: ...


@runtime_checkable
class AnswerRecorder(Protocol):
    """A client that counts how its answers read (``LLMClient`` does, into metrics)."""

    def record_answer(self, task: str, outcome: str, *, truncated: int,
                      looped: int = 0) -> None: ...


@runtime_checkable
class SimulatorAware(Protocol):
    """A client that knows whether its answers came from iterrefine's simulator (its
    responses say so); ``LLMClient`` does, so output is marked by what answered it."""

    @property
    def answered_by_simulator(self) -> bool: ...
