"""Scripted LLM answers: per task, fixed text or text made from the request; the rest simulated.

One :class:`Script` answers OpenAI chat-completion request bodies. It serves both test
kits: :class:`~iterrefine.testing.ScriptedLLM` puts it behind HTTP for a graph on a real
broker, and :class:`~iterrefine.testing.StageKit` behind an in-process transport of the
real ``openai`` client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from iterrefine.sim import SimConfig
from iterrefine.sim.answers import render, request_schema
from iterrefine.sim.prompt import CHAT_TASK, PromptError, SimPrompt, parse_prompt
from iterrefine.sim.server import OWNER


@dataclass(frozen=True)
class Reply:
    """An answer with its finish reason: ``Reply(text, "length")`` is an answer cut off."""

    text: str
    finish_reason: str = "stop"


class ScriptedRequest(Mapping[str, Any]):
    """One task request as a script sees it: a mapping of its fenced data block (so
    ``lambda data: data["instruction"]`` works), plus the task, round and whole body."""

    def __init__(self, prompt: SimPrompt, body: Mapping[str, Any]) -> None:
        self.task = prompt.task
        self.round = prompt.round
        self.data: dict[str, Any] = dict(prompt.data)
        self.body: Mapping[str, Any] = body

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def max_tokens(self) -> int | None:
        value = self.body.get("max_tokens")
        return value if isinstance(value, int) else None

    @property
    def system(self) -> str:
        """The system message: the task's instructions."""
        return _message(self.body, "system")

    @property
    def user(self) -> str:
        """The user message: round header and the fenced data block."""
        return _message(self.body, "user")

    def __repr__(self) -> str:
        return f"ScriptedRequest(task={self.task!r}, round={self.round}, data={self.data!r})"


#: A scripted answer: fixed text (or :class:`Reply`), or one made from the request.
Answer = str | Reply | Callable[[ScriptedRequest], "str | Reply"]


def _message(body: Mapping[str, Any], role: str) -> str:
    messages = body.get("messages") or []
    found = [m.get("content", "") for m in messages
             if isinstance(m, dict) and m.get("role") == role]
    return str(found[-1]) if found else ""


class Script:
    """Answers chat-completion bodies: a scripted task gets its answer, any other task the
    simulator's. Records every task request (a client's untagged structured-output probe
    is answered like the simulator does, and not recorded)."""

    def __init__(self, answers: Mapping[str, Answer] | None = None,
                 sim: SimConfig | None = None) -> None:
        self.answers = dict(answers or {})
        self.sim = sim if sim is not None else SimConfig()
        self.requests: list[ScriptedRequest] = []

    def count(self, task: str) -> int:
        """How many requests of ``task`` were made."""
        return sum(1 for request in self.requests if request.task == task)

    def of(self, task: str) -> list[ScriptedRequest]:
        """The requests of ``task``, in order."""
        return [request for request in self.requests if request.task == task]

    def respond(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """HTTP status and JSON body of the answer to one chat-completion request."""
        try:
            prompt = parse_prompt(_message(body, "system"), _message(body, "user"))
        except PromptError as exc:
            return 400, {"error": {"message": str(exc)}}
        reply = self._reply(prompt, body)
        return 200, {
            "id": f"chatcmpl-scripted-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model", "scripted")),
            "system_fingerprint": OWNER,  # scripted and simulated output is marked so
            "choices": [{"index": 0, "finish_reason": reply.finish_reason,
                         "message": {"role": "assistant", "content": reply.text}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    def models(self) -> dict[str, Any]:
        """``/v1/models``: the simulator's names, owned by the simulator."""
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": OWNER}
                                           for m in self.sim.models]}

    def _reply(self, prompt: SimPrompt, body: Mapping[str, Any]) -> Reply:
        request = ScriptedRequest(prompt, body)
        if prompt.task != CHAT_TASK:
            self.requests.append(request)
        scripted = self.answers.get(prompt.task)
        if scripted is None:
            response_format = body.get("response_format")
            structured = (response_format or {}).get("type") in ("json_schema", "json_object")
            return Reply(render(prompt, self.sim, structured=structured,
                                schema=request_schema(response_format)))
        answer = scripted(request) if callable(scripted) else scripted
        return answer if isinstance(answer, Reply) else Reply(answer)
