"""Asking a model one task: render the prompt, call the endpoint, read the answer.

The pipeline stages call :func:`ask` (or its typed helpers, ``ask_score`` …) with the
task's data; this module is the seam between the stages' decisions and the LLM
mechanics. An answer that cannot be parsed is asked again, with a note in the system
message, up to ``parse_retries`` more times; then the last :class:`UnparseableOutput`
is raised for the runtime's dead-letter policy. Transport failures are not handled
here: the client retries those.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, Final, Literal, Protocol, overload, runtime_checkable

import msgspec
import structlog

from iterrefine.errors import UnparseableOutput
from iterrefine.llm.chat import AnswerRecorder, ChatClient, ChatReply
from iterrefine.parsing import (
    SCHEMAS,
    AlignedAnswer,
    AnswerContext,
    EvaluationAnswer,
    RevisionAnswer,
    ScoreAnswer,
    VerdictAnswer,
    clean_answer,
    parse_aligned,
    parse_evaluation,
    parse_revision,
    parse_score,
    parse_verdict,
)
from iterrefine.prompts import build_messages

__all__ = [
    "PARSERS",
    "AnswerRecorder",
    "ChatClient",
    "ChatReply",
    "ReviewSample",
    "ask",
    "ask_aligned",
    "ask_answer",
    "ask_evaluation",
    "ask_revision",
    "ask_score",
    "ask_verdict",
]

log = structlog.get_logger(__name__)


@runtime_checkable
class RemembersAnswers(Protocol):
    """A client with a response cache (``LLMClient``): it keeps an answer once it is read."""

    def remember(self, reply: object, *, readable: bool) -> None: ...


#: How an answer was read: on the first call, after re-asking, or not at all.
AnswerOutcome = Literal["first_try", "after_reask", "unreadable"]

#: The parser that reads each task's answer; the context (the request's nonce, item
#: text and instructions) keeps prompt scaffolding and item text out of the fields.
PARSERS: Final[dict[str, Callable[[str, AnswerContext | None], object]]] = {
    "score": parse_score,
    "answer": clean_answer,
    "evaluate": parse_evaluation,
    "refine": parse_revision,
    "review": parse_verdict,
    "align": parse_aligned,
}


@overload
async def ask(
    client: ChatClient,
    task: Literal["score"],
    data: dict[str, Any],
    *,
    round: None = None,
    parse_retries: int = 2,
    max_tokens: int | None = None,
) -> ScoreAnswer: ...
@overload
async def ask(
    client: ChatClient,
    task: Literal["answer"],
    data: dict[str, Any],
    *,
    round: None = None,
    parse_retries: int = 2,
    max_tokens: int | None = None,
) -> str: ...
@overload
async def ask(
    client: ChatClient,
    task: Literal["evaluate"],
    data: dict[str, Any],
    *,
    round: None = None,
    parse_retries: int = 2,
    max_tokens: int | None = None,
) -> EvaluationAnswer: ...
@overload
async def ask(
    client: ChatClient,
    task: Literal["refine"],
    data: dict[str, Any],
    *,
    round: int,
    parse_retries: int = 2,
    max_tokens: int | None = None,
) -> RevisionAnswer: ...
@overload
async def ask(
    client: ChatClient,
    task: Literal["review"],
    data: dict[str, Any],
    *,
    round: int,
    parse_retries: int = 2,
    max_tokens: int | None = None,
) -> VerdictAnswer: ...
@overload
async def ask(
    client: ChatClient,
    task: Literal["align"],
    data: dict[str, Any],
    *,
    round: None = None,
    parse_retries: int = 2,
    max_tokens: int | None = None,
) -> AlignedAnswer: ...
@overload
async def ask(
    client: ChatClient,
    task: str,
    data: dict[str, Any],
    *,
    round: int | None = None,
    parse_retries: int = 2,
    max_tokens: int | None = None,
) -> object: ...
async def ask(
    client: ChatClient,
    task: str,
    data: dict[str, Any],
    *,
    round: int | None = None,
    parse_retries: int = 2,
    max_tokens: int | None = None,
) -> object:
    """Ask ``client`` to do ``task`` on ``data`` and return the parsed answer.

    Makes ``1 + parse_retries`` calls at most. Raises the last
    :class:`UnparseableOutput` when none of the answers can be read; errors from the
    client (transient or not) propagate unchanged.
    """
    parser = PARSERS.get(task)
    if parser is None:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(PARSERS)}")
    if parse_retries < 0:
        raise ValueError(f"parse_retries must be >= 0, got {parse_retries}")
    schema = SCHEMAS.get(task)
    attempts = 1 + parse_retries
    last_error: UnparseableOutput | None = None
    truncated = 0
    for attempt in range(1, attempts + 1):
        # A fresh nonce per request: an answer repeating it is an echo of this prompt.
        nonce = secrets.token_hex(4)
        messages = build_messages(
            task, data, round=round, nonce=nonce, reask=last_error is not None
        )
        reply = await client.chat(
            messages,
            json_schema=schema,
            schema_name=f"iterrefine_{task}",
            max_tokens=max_tokens,
        )
        if getattr(reply, "finish_reason", None) == "length":
            truncated += 1
        try:
            answer = parser(reply.text, AnswerContext.for_request(messages, data, nonce))
        except UnparseableOutput as exc:
            _remember(client, reply, readable=False)
            last_error = exc
            log.warning(
                "llm_answer_unparseable",
                task=task,
                attempt=attempt,
                attempts=attempts,
                error=str(exc),
            )
        else:
            _remember(client, reply, readable=True)
            _record(client, task, "first_try" if attempt == 1 else "after_reask", truncated)
            return answer
    _record(client, task, "unreadable", truncated)
    assert last_error is not None  # the loop ran at least once and never returned
    raise last_error


def _record(client: ChatClient, task: str, outcome: AnswerOutcome, truncated: int) -> None:
    if isinstance(client, AnswerRecorder):
        client.record_answer(task, outcome, truncated=truncated)


def _remember(client: ChatClient, reply: ChatReply, *, readable: bool) -> None:
    """Tell a caching client whether its answer could be read: only readable ones are kept."""
    if isinstance(client, RemembersAnswers):
        client.remember(reply, readable=readable)


# ---------------------------------------------------------------- typed helpers


class ReviewSample(msgspec.Struct, frozen=True, kw_only=True):
    """One side of a pairwise review: an instruction/input and the backbone's answer."""

    instruction: str
    input: str
    answer: str


async def ask_score(
    client: ChatClient, *, instruction: str, input: str, output: str, parse_retries: int = 2
) -> ScoreAnswer:
    """IQD: the judge's usability, dimension scores and high/low verdict for an item."""
    data = {"instruction": instruction, "input": input, "output": output}
    return await ask(client, "score", data, parse_retries=parse_retries)


async def ask_answer(
    client: ChatClient, *, instruction: str, input: str, parse_retries: int = 2
) -> str:
    """The backbone's answer to an instruction (and input)."""
    data = {"instruction": instruction, "input": input}
    return await ask(client, "answer", data, parse_retries=parse_retries)


async def ask_evaluation(
    client: ChatClient,
    *,
    instruction: str,
    input: str,
    reference_output: str,
    candidate_answer: str,
    parse_retries: int = 2,
) -> EvaluationAnswer:
    """FIR evaluate: grade the backbone's answer against the reference output."""
    data = {
        "instruction": instruction,
        "input": input,
        "reference_output": reference_output,
        "candidate_answer": candidate_answer,
    }
    return await ask(client, "evaluate", data, parse_retries=parse_retries)


async def ask_revision(
    client: ChatClient,
    *,
    round: int,
    instruction: str,
    input: str,
    reference_output: str,
    evaluation: str,
    reviewer_feedback: str | None = None,
    parse_retries: int = 2,
) -> RevisionAnswer:
    """FIR refine: rewrite instruction/input from the evaluation (and, from round 2, the
    reviewer's explanation of why the previous revision lost).

    ``evaluation`` is the evaluation as text: :func:`iterrefine.prompts.evaluation_text`.
    """
    data = {
        "instruction": instruction,
        "input": input,
        "reference_output": reference_output,
        "evaluation": evaluation,
    }
    if reviewer_feedback is not None:
        data["reviewer_feedback"] = reviewer_feedback
    return await ask(client, "refine", data, round=round, parse_retries=parse_retries)


async def ask_verdict(
    client: ChatClient,
    *,
    round: int,
    a: ReviewSample,
    b: ReviewSample,
    parse_retries: int = 2,
) -> VerdictAnswer:
    """FIR review: the pairwise judge's winner between sample A and sample B.

    The winner names a position; with position swapping the caller maps it back.
    """
    data = {"A": msgspec.to_builtins(a), "B": msgspec.to_builtins(b)}
    return await ask(client, "review", data, round=round, parse_retries=parse_retries)


async def ask_aligned(
    client: ChatClient,
    *,
    original_instruction: str,
    original_input: str,
    original_output: str,
    revised_instruction: str,
    revised_input: str,
    parse_retries: int = 2,
) -> AlignedAnswer:
    """OA: the reference output rewritten to answer the revised instruction/input."""
    data = {
        "original_instruction": original_instruction,
        "original_input": original_input,
        "original_output": original_output,
        "revised_instruction": revised_instruction,
        "revised_input": revised_input,
    }
    return await ask(client, "align", data, parse_retries=parse_retries)
