"""Asking a model one task: render the prompt, call the endpoint, read the answer.

The pipeline stages call :func:`ask` (or its typed helpers, ``ask_score`` …) with the
task's data; this module is the seam between the stages' decisions and the LLM
mechanics. An answer that cannot be parsed is asked again, with a note in the system
message, up to ``parse_retries`` more times; then the last :class:`UnparseableOutput`
is raised for the runtime's dead-letter policy. Transport failures are not handled
here: the client retries those.

An answer cut off at ``max_tokens`` (``finish_reason == "length"``) is never parsed:
a parser could read a half-written text as complete. It is asked again once with
twice the limit; cut off again, it raises :class:`TruncatedOutput` (an
:class:`UnparseableOutput`), so each stage's policy for unreadable answers applies.

Except when it was cut off because the model looped (:mod:`iterrefine.llm.loops`:
repeating itself until the limit): twice the limit would buy twice the loop. Such an
answer — recognised in the returned text, or cut short while streaming (the client's
``finish_reason == "loop"``) — is read without its repeats (a JSON answer cut inside a
field is closed after the kept copy), and if that does not parse it is asked again like
any unreadable answer, at the same limit — with a frequency penalty of at least
:data:`LOOP_REASK_PENALTY` where the task allows one: at temperature 0 the same request
loops the same way (SmolLM2-135M wrote ``"reason": "1.1.1.1…"`` three times running, and
the two items were dead-lettered).

Each task brings its generation settings (:class:`~iterrefine.llm.chat.ChatOptions`)
and, with ``fit_tokens``, a limit fitted to the request's data
(:mod:`iterrefine.tasks.limits`) under the configured one.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, overload

import msgspec
import structlog

from iterrefine.errors import TruncatedOutput, UnparseableOutput
from iterrefine.llm.chat import AnswerRecorder, ChatClient, ChatReply, TruncationHook
from iterrefine.tasks._replies import (
    Counts,
    record,
    remember,
    without_loop,
)
from iterrefine.tasks.parsing import (
    AlignedAnswer,
    AnswerContext,
    EvaluationAnswer,
    RevisionAnswer,
    ScoreAnswer,
    VerdictAnswer,
)
from iterrefine.tasks.prompts import build_messages
from iterrefine.tasks.registry import BUILTIN_TASKS, TASKS, TaskSpec

__all__ = [
    "PARSERS",
    "AnswerRecorder",
    "ChatClient",
    "ChatReply",
    "ReviewSample",
    "TruncationHook",
    "ask",
    "ask_aligned",
    "ask_answer",
    "ask_evaluation",
    "ask_revision",
    "ask_score",
    "ask_verdict",
]

log = structlog.get_logger(__name__)


#: The limit of a re-ask after a cut-off answer when the first request named none.
_REASK_TOKENS_WITHOUT_LIMIT: Final = 8192
#: The frequency penalty of a re-ask after an answer that looped and could not be read
#: (the role's, when higher; never on tasks that copy item text).
LOOP_REASK_PENALTY: Final = 0.5


#: The parser that reads each built-in task's answer (the registry's, as a table); the
#: context (the request's nonce, item text and instructions) keeps prompt scaffolding
#: and item text out of the fields.
PARSERS: Final[dict[str, Callable[[str, AnswerContext | None], object]]] = {
    name: TASKS[name].parse for name in BUILTIN_TASKS
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
    on_truncated: TruncationHook | None = None,
    fit_tokens: bool = False,
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
    on_truncated: TruncationHook | None = None,
    fit_tokens: bool = False,
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
    on_truncated: TruncationHook | None = None,
    fit_tokens: bool = False,
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
    on_truncated: TruncationHook | None = None,
    fit_tokens: bool = False,
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
    on_truncated: TruncationHook | None = None,
    fit_tokens: bool = False,
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
    on_truncated: TruncationHook | None = None,
    variant: str | None = None,
    fit_tokens: bool = False,
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
    on_truncated: TruncationHook | None = None,
    variant: str | None = None,
    fit_tokens: bool = False,
) -> object: ...
async def ask(
    client: ChatClient,
    task: str,
    data: dict[str, Any],
    *,
    round: int | None = None,
    parse_retries: int = 2,
    max_tokens: int | None = None,
    on_truncated: TruncationHook | None = None,
    variant: str | None = None,
    fit_tokens: bool = False,
) -> object:
    """Ask ``client`` to do ``task`` on ``data`` and return the parsed answer.

    Makes ``1 + parse_retries`` calls at most, plus one re-ask with twice ``max_tokens``
    after the first answer cut off at the limit (not for a loop: see the module
    docstring). Raises the last :class:`UnparseableOutput` when none of the answers can
    be read, and :class:`TruncatedOutput` when the re-ask is cut off too; errors from
    the client (transient or not) propagate unchanged.
    """
    spec = _spec(task, parse_retries)
    parser, schema, options = spec.parse, spec.schema, spec.options
    attempts = 1 + parse_retries
    limit = max_tokens
    if fit_tokens and limit is not None and spec.fit_tokens is not None:
        limit = min(limit, spec.fit_tokens(data, variant))
    raised_limit = False
    last_error: UnparseableOutput | None = None
    counts = Counts()
    attempt = 0
    while attempt < attempts:
        # A fresh nonce per request: an answer repeating it is an echo of this prompt.
        nonce = secrets.token_hex(4)
        messages = build_messages(task, data, round=round, nonce=nonce,
                                  reask=last_error is not None, variant=variant)
        reply = await client.chat(
            messages,
            json_schema=schema,
            schema_name=f"iterrefine_{task}",
            max_tokens=limit,
            options=options,
        )
        looped = counts.looped
        text = without_loop(reply, task, limit, counts, json_answer=schema is not None)
        if text is None:  # cut off at the limit, and not by a loop
            counts.truncated += 1
            remember(client, reply, readable=False)  # a half-written answer is never kept
            if on_truncated is not None:
                on_truncated(task)
            log.warning("llm_answer_truncated", task=task, max_tokens=limit,
                        reask=not raised_limit)
            if raised_limit:
                record(client, task, "unreadable", counts)
                raise TruncatedOutput(
                    f"the {task} answer was cut off at max_tokens={limit} twice",
                    task=task, raw=reply.text,
                )
            # Not a parse attempt: the same request with room to finish.
            raised_limit = True
            limit = 2 * limit if limit is not None else _REASK_TOKENS_WITHOUT_LIMIT
            continue
        attempt += 1
        try:
            answer = parser(text, AnswerContext.for_request(messages, data, nonce))
        except UnparseableOutput as exc:
            remember(client, reply, readable=False)
            last_error = exc
            if counts.looped > looped:  # the same request would loop the same way
                options = msgspec.structs.replace(options,
                                                  frequency_penalty=LOOP_REASK_PENALTY)
            log.warning("llm_answer_unparseable", task=task, attempt=attempt,
                        attempts=attempts, error=str(exc))
        else:
            remember(client, reply, readable=True)
            first_try = attempt == 1 and not counts.truncated
            record(client, task, "first_try" if first_try else "after_reask", counts)
            return answer
    record(client, task, "unreadable", counts)
    assert last_error is not None  # the loop ran at least once and never returned
    raise last_error


def _spec(task: str, parse_retries: int) -> TaskSpec:
    spec = TASKS.get(task)
    if spec is None:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if parse_retries < 0:
        raise ValueError(f"parse_retries must be >= 0, got {parse_retries}")
    return spec


# ---------------------------------------------------------------- typed helpers


class ReviewSample(msgspec.Struct, frozen=True, kw_only=True):
    """One side of a pairwise review: an instruction/input and the backbone's answer."""

    instruction: str
    input: str
    answer: str


async def ask_score(
    client: ChatClient,
    *,
    instruction: str,
    input: str,
    output: str,
    parse_retries: int = 2,
    max_tokens: int | None = None,
    on_truncated: TruncationHook | None = None,
    fit_tokens: bool = False,
) -> ScoreAnswer:
    """IQD: the judge's usability, dimension scores and high/low verdict for an item."""
    data = {"instruction": instruction, "input": input, "output": output}
    return await ask(client, "score", data, parse_retries=parse_retries,
                     max_tokens=max_tokens, on_truncated=on_truncated)


async def ask_answer(
    client: ChatClient,
    *,
    instruction: str,
    input: str,
    parse_retries: int = 2,
    max_tokens: int | None = None,
    on_truncated: TruncationHook | None = None,
    fit_tokens: bool = False,
) -> str:
    """The backbone's answer to an instruction (and input)."""
    data = {"instruction": instruction, "input": input}
    return await ask(client, "answer", data, parse_retries=parse_retries,
                     max_tokens=max_tokens, on_truncated=on_truncated)


async def ask_evaluation(
    client: ChatClient,
    *,
    instruction: str,
    input: str,
    reference_output: str,
    candidate_answer: str,
    parse_retries: int = 2,
    max_tokens: int | None = None,
    on_truncated: TruncationHook | None = None,
    fit_tokens: bool = False,
) -> EvaluationAnswer:
    """FIR evaluate: grade the backbone's answer against the reference output."""
    data = {
        "instruction": instruction,
        "input": input,
        "reference_output": reference_output,
        "candidate_answer": candidate_answer,
    }
    return await ask(client, "evaluate", data, parse_retries=parse_retries,
                     max_tokens=max_tokens, on_truncated=on_truncated)


async def ask_revision(
    client: ChatClient,
    *,
    round: int,
    instruction: str,
    input: str,
    reference_output: str,
    backbone_answer: str,
    evaluation: str,
    feedback_set: Sequence[str] = (),
    parse_retries: int = 2,
    max_tokens: int | None = None,
    on_truncated: TruncationHook | None = None,
    fit_tokens: bool = False,
) -> RevisionAnswer:
    """FIR refine: rewrite instruction/input from the backbone's answer and its evaluation
    (and, from round 2, every earlier reviewer's explanation of a loss, oldest first).

    ``evaluation`` is the evaluation as text: :func:`iterrefine.tasks.prompts.evaluation_text`.
    """
    data: dict[str, Any] = {
        "instruction": instruction,
        "input": input,
        "reference_output": reference_output,
        "backbone_answer": backbone_answer,
        "evaluation": evaluation,
    }
    if feedback_set:
        data["feedback_set"] = list(feedback_set)
    return await ask(client, "refine", data, round=round, parse_retries=parse_retries,
                     max_tokens=max_tokens, on_truncated=on_truncated, fit_tokens=fit_tokens)


async def ask_verdict(
    client: ChatClient,
    *,
    round: int,
    a: ReviewSample,
    b: ReviewSample,
    parse_retries: int = 2,
    max_tokens: int | None = None,
    on_truncated: TruncationHook | None = None,
    fit_tokens: bool = False,
) -> VerdictAnswer:
    """FIR review: the pairwise judge's winner between sample A and sample B.

    The winner names a position; with position swapping the caller maps it back.
    """
    data = {"A": msgspec.to_builtins(a), "B": msgspec.to_builtins(b)}
    return await ask(client, "review", data, round=round, parse_retries=parse_retries,
                     max_tokens=max_tokens, on_truncated=on_truncated)


async def ask_aligned(
    client: ChatClient,
    *,
    original_instruction: str,
    original_input: str,
    original_output: str,
    revised_instruction: str,
    revised_input: str,
    mode: Literal["anchored", "complete"] = "anchored",
    parse_retries: int = 2,
    max_tokens: int | None = None,
    on_truncated: TruncationHook | None = None,
    fit_tokens: bool = False,
) -> AlignedAnswer:
    """OA: the reference output rewritten to answer the revised instruction/input.

    ``anchored`` adds no new facts; ``complete`` answers the revised instruction in
    full, adding what it calls for and keeping the original's facts where they apply.
    """
    data = {
        "original_instruction": original_instruction,
        "original_input": original_input,
        "original_output": original_output,
        "revised_instruction": revised_instruction,
        "revised_input": revised_input,
    }
    return await ask(client, "align", data, parse_retries=parse_retries,
                     max_tokens=max_tokens, on_truncated=on_truncated, fit_tokens=fit_tokens,
                     variant=None if mode == "anchored" else mode)
