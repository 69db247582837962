"""The ask layer: build the prompt, call the ChatClient seam, parse, re-ask when unreadable."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
from structlog.testing import capture_logs

from iterrefine.errors import LLMTransientError, TruncatedOutput, UnparseableOutput
from iterrefine.llm.chat import ChatOptions
from iterrefine.tasks.ask import (
    ReviewSample,
    ask,
    ask_aligned,
    ask_answer,
    ask_evaluation,
    ask_revision,
    ask_score,
    ask_verdict,
)
from iterrefine.tasks.limits import fit_aligned
from iterrefine.tasks.parsing import SCHEMAS, RevisionAnswer, VerdictAnswer

pytestmark = pytest.mark.unit

GOOD_VERDICT = "Winner: B\nExplanation: B names the expected format."
REVIEW_DATA = {
    "A": {"instruction": "Sort these.", "input": "3 1 2", "answer": "1 2 3"},
    "B": {"instruction": "Sort these ascending.", "input": "3 1 2", "answer": "1 2 3"},
}


@dataclass
class Reply:
    text: str


class ScriptedClient:
    """A ChatClient (the Protocol seam) that answers from a script and records the calls."""

    def __init__(self, *answers: str | BaseException) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        json_schema: dict[str, Any] | None = None,
        schema_name: str = "answer",
        max_tokens: int | None = None,
        options: ChatOptions | None = None,
    ) -> Reply:
        self.calls.append(
            {"messages": messages, "json_schema": json_schema, "schema_name": schema_name}
        )
        answer = self.answers[min(len(self.calls), len(self.answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        return Reply(answer)


async def test_unparseable_twice_then_good_is_parsed() -> None:
    """Two unreadable answers, then a good one: ask returns the parsed verdict."""
    client = ScriptedClient("I like both.", "Hmm, hard to say.", GOOD_VERDICT)
    with capture_logs() as logs:
        answer = await ask(client, "review", REVIEW_DATA, round=1, parse_retries=2)
    assert answer == VerdictAnswer(winner="B", explanation="B names the expected format.")
    assert len(client.calls) == 3
    warnings = [e for e in logs if e["event"] == "llm_answer_unparseable"]
    assert [e["attempt"] for e in warnings] == [1, 2]


async def test_always_unparseable_raises_after_one_plus_retries_calls() -> None:
    """Unreadable every time: UnparseableOutput after exactly 1 + parse_retries calls."""
    client = ScriptedClient("I like both.", "Still undecided.", "No idea.", "never asked")
    with pytest.raises(UnparseableOutput) as caught:
        await ask(client, "review", REVIEW_DATA, round=1, parse_retries=2)
    assert len(client.calls) == 3
    assert caught.value.task == "review" and caught.value.raw == "No idea."


async def test_zero_parse_retries_asks_once() -> None:
    """parse_retries=0 makes a single call."""
    client = ScriptedClient("no winner here")
    with pytest.raises(UnparseableOutput):
        await ask(client, "review", REVIEW_DATA, round=1, parse_retries=0)
    assert len(client.calls) == 1


async def test_reask_carries_the_note_and_a_fresh_nonce() -> None:
    """The re-ask adds the note to the system message and fences the data with a new nonce."""
    client = ScriptedClient("unreadable", GOOD_VERDICT)
    await ask(client, "review", REVIEW_DATA, round=1)
    first, second = (call["messages"] for call in client.calls)
    assert "could not be read" not in first[0]["content"]
    assert "could not be read" in second[0]["content"]
    assert first[1]["content"] != second[1]["content"]


async def test_schema_is_passed_per_task() -> None:
    """Each call carries the task's JSON schema; the free-text answer task carries none."""
    client = ScriptedClient(GOOD_VERDICT)
    await ask(client, "review", REVIEW_DATA, round=1)
    assert client.calls[0]["json_schema"] == SCHEMAS["review"]
    assert client.calls[0]["schema_name"] == "iterrefine_review"
    answer_client = ScriptedClient("The answer.")
    assert await ask(answer_client, "answer", {"instruction": "Say hi.", "input": ""}) == (
        "The answer."
    )
    assert answer_client.calls[0]["json_schema"] is None


async def test_client_errors_propagate_without_reasking() -> None:
    """A transport error from the client is not a parse failure: it propagates at once."""
    client = ScriptedClient(LLMTransientError("503"))
    with pytest.raises(LLMTransientError):
        await ask(client, "review", REVIEW_DATA, round=1)
    assert len(client.calls) == 1


async def test_unknown_task_and_negative_retries_are_rejected() -> None:
    """An unknown task or a negative parse_retries is a programming error (ValueError)."""
    client = ScriptedClient(GOOD_VERDICT)
    with pytest.raises(ValueError, match=r"^unknown task 'nope'; expected one of score, "):
        await ask(client, "nope", {})
    with pytest.raises(ValueError, match=r"^parse_retries must be >= 0, got -1$"):
        await ask(client, "review", REVIEW_DATA, round=1, parse_retries=-1)
    assert client.calls == []


async def test_typed_helpers_build_the_contract_data() -> None:
    """The typed helpers send the contract's data keys and return the parsed structs."""
    client = ScriptedClient(
        "Usable: yes\nReason: ok\nCorrectness: 8\nCompleteness: 8\nClarity: 8\n"
        "Compliance: 8\nReasoning: 8\nVerdict: high\nJustification: fine",
        "Score: 4\nEvaluation: partial\nSuggestions:\n1. Say ascending.",
        "instruction_new: Sort these numbers in ascending order.\ninput_new: 3 1 2",
        GOOD_VERDICT,
        "Output:\n1 2 3",
    )
    score = await ask_score(client, instruction="Sort these.", input="3 1 2", output="1 2 3")
    evaluation = await ask_evaluation(
        client,
        instruction="Sort these.",
        input="3 1 2",
        reference_output="1 2 3",
        candidate_answer="3 2 1",
    )
    revision = await ask_revision(
        client,
        round=2,
        instruction="Sort these.",
        input="3 1 2",
        reference_output="1 2 3",
        backbone_answer="3 2 1",
        evaluation="Score: 4",
        feedback_set=["The revision dropped the input."],
    )
    verdict = await ask_verdict(
        client,
        round=2,
        a=ReviewSample(instruction="Sort these.", input="3 1 2", answer="1 2 3"),
        b=ReviewSample(instruction=revision.instruction, input=revision.input, answer="1 2 3"),
    )
    aligned = await ask_aligned(
        client,
        original_instruction="Sort these.",
        original_input="3 1 2",
        original_output="1 2 3",
        revised_instruction=revision.instruction,
        revised_input=revision.input,
    )
    assert score.verdict == "high" and evaluation.score == 4
    assert revision == RevisionAnswer(
        instruction="Sort these numbers in ascending order.", input="3 1 2"
    )
    assert verdict.winner == "B" and aligned.output == "1 2 3"
    tags = [call["messages"][0]["content"].split()[1] for call in client.calls]
    assert tags == ["task=score", "task=evaluate", "task=refine", "task=review", "task=align"]
    refine_user = client.calls[2]["messages"][1]["content"]
    assert refine_user.startswith("Round: 2\n") and "feedback_set" in refine_user


@dataclass
class CutReply:
    text: str
    finish_reason: str | None


class LimitedClient:
    """Answers cut off (finish_reason=length) unless max_tokens reaches ``enough``."""

    def __init__(self, text: str, enough: int) -> None:
        self.text, self.enough = text, enough
        self.limits: list[int | None] = []

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        json_schema: dict[str, Any] | None = None,
        schema_name: str = "answer",
        max_tokens: int | None = None,
        options: ChatOptions | None = None,
    ) -> CutReply:
        self.limits.append(max_tokens)
        if (max_tokens or 0) >= self.enough:
            return CutReply(self.text, "stop")
        return CutReply(self.text[:10], "length")


async def test_cut_off_answer_is_reasked_once_with_twice_the_limit() -> None:
    """finish_reason=length: one re-ask at 2 × max_tokens, counted; the whole answer is parsed."""
    client = LimitedClient(GOOD_VERDICT, enough=200)
    seen: list[str] = []
    answer = await ask(client, "review", REVIEW_DATA, round=1, max_tokens=100,
                       on_truncated=seen.append)
    assert answer.winner == "B" and client.limits == [100, 200] and seen == ["review"]


async def test_cut_off_twice_raises_truncated_output_without_parsing() -> None:
    """Cut off again at the higher limit: TruncatedOutput, even though the prefix would parse."""
    client = LimitedClient("Winner: B\nExplanation: a long story", enough=10**9)
    with pytest.raises(TruncatedOutput) as caught:
        await ask(client, "review", REVIEW_DATA, round=1, max_tokens=100, parse_retries=2)
    assert client.limits == [100, 200]
    assert isinstance(caught.value, UnparseableOutput) and caught.value.task == "review"


async def test_cut_off_without_a_limit_is_reasked_with_a_generous_one() -> None:
    """No max_tokens given (the role's default applied): the re-ask names 8192."""
    client = LimitedClient(GOOD_VERDICT, enough=8192)
    await ask(client, "review", REVIEW_DATA, round=1)
    assert client.limits == [None, 8192]


# --- the ask layer's own rules, each pinned (benchmarks/mutation.py --target
# iterrefine/tasks/ask.py found them unguarded by any pure test) ---------------------------


@dataclass
class Finished:
    text: str
    finish_reason: str


class BookkeepingClient:
    """A ChatClient with a response cache and outcome counters, as ``LLMClient`` has: it
    answers ``answers`` in turn (a callable gets the request's messages) and records
    what ask tells it to keep, how each task's answer read, and each call's limit."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.messages: list[list[dict[str, str]]] = []
        self.limits: list[int | None] = []
        self.kept: list[bool] = []
        self.outcomes: list[tuple[str, str, int]] = []

    async def chat(self, messages: list[dict[str, str]], *,
                   json_schema: dict[str, Any] | None = None, schema_name: str = "answer",
                   max_tokens: int | None = None, options: ChatOptions | None = None) -> Any:
        self.messages.append(messages)
        self.limits.append(max_tokens)
        answer = self.answers[len(self.messages) - 1]
        return answer(messages) if callable(answer) else answer

    def remember(self, reply: object, *, readable: bool) -> None:
        self.kept.append(readable)

    def record_answer(self, task: str, outcome: str, *, truncated: int,
                      looped: int = 0) -> None:
        self.outcomes.append((task, outcome, truncated))


def _echo_nonce(messages: list[dict[str, str]]) -> Finished:
    nonce = re.search(r"<<<DATA ([0-9a-f]{8})>>>", messages[-1]["content"])
    assert nonce is not None
    return Finished(f"Winner: B\nExplanation: as block {nonce.group(1)} says.", "stop")


async def test_an_answer_reproducing_its_requests_nonce_is_refused() -> None:
    """The parser knows the nonce the prompt fenced the data with: an answer repeating
    it is an echo of the prompt, refused and asked again (with a fresh nonce)."""
    client = BookkeepingClient(_echo_nonce, Finished(GOOD_VERDICT, "stop"))
    answer = await ask(client, "review", REVIEW_DATA, round=1)
    assert answer.winner == "B" and len(client.messages) == 2
    first, second = (re.findall(r"<<<DATA ([0-9a-f]{8})>>>", m[-1]["content"])
                     for m in client.messages)
    assert first and second and first != second
    assert client.kept == [False, True]


async def test_a_cut_off_answer_is_never_kept_and_counts_against_the_first_try() -> None:
    """Cut at the limit (no loop): not kept in the cache, re-asked at twice the limit; the
    answer then read counts as read after a re-ask, with one truncation."""
    client = BookkeepingClient(Finished("Winner: B\nExplanation: because", "length"),
                               Finished(GOOD_VERDICT, "stop"))
    await ask(client, "review", REVIEW_DATA, round=1, max_tokens=100)
    assert client.limits == [100, 200]
    assert client.kept == [False, True]
    assert client.outcomes == [("review", "after_reask", 1)]


async def test_cut_off_twice_and_unreadable_answers_are_counted_unreadable() -> None:
    cut = Finished("Winner: B\nExplanation: because", "length")
    client = BookkeepingClient(cut, cut)
    with pytest.raises(TruncatedOutput):
        await ask(client, "review", REVIEW_DATA, round=1, max_tokens=100)
    assert client.outcomes == [("review", "unreadable", 2)] and client.kept == [False, False]
    prose = Finished("I like both.", "stop")
    client = BookkeepingClient(prose, prose, prose)
    with pytest.raises(UnparseableOutput):
        await ask(client, "review", REVIEW_DATA, round=1)
    assert client.outcomes == [("review", "unreadable", 0)]


async def test_limits_are_fitted_only_when_asked_and_by_the_variant() -> None:
    """``fit_tokens`` is off unless asked (the paper preset's limits stay as configured);
    a fitted align limit follows its variant (``complete`` gets more room)."""
    data = {"original_instruction": "Q?", "original_input": "", "original_output": "x" * 300,
            "revised_instruction": "Q, exactly?", "revised_input": ""}
    answer = Finished('{"output": "x"}', "stop")
    plain, anchored, complete = (BookkeepingClient(answer) for _ in range(3))
    await ask(plain, "align", data, max_tokens=8192)
    await ask(anchored, "align", data, max_tokens=8192, fit_tokens=True)
    await ask(complete, "align", data, max_tokens=8192, fit_tokens=True, variant="complete")
    assert plain.limits == [8192]
    assert anchored.limits == [fit_aligned(data)]
    assert complete.limits == [fit_aligned(data, "complete")] != anchored.limits


_SAMPLE = ReviewSample(instruction="Sort these.", input="3 1 2", answer="1 2 3")
_HELPERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "score": (ask_score, {"instruction": "Q?", "input": "", "output": "A."}),
    "answer": (ask_answer, {"instruction": "Q?", "input": ""}),
    "evaluate": (ask_evaluation, {"instruction": "Q?", "input": "", "reference_output": "A.",
                                  "candidate_answer": "B."}),
    "refine": (ask_revision, {"round": 1, "instruction": "Q?", "input": "",
                              "reference_output": "A.", "backbone_answer": "B.",
                              "evaluation": "Score: 4"}),
    "review": (ask_verdict, {"round": 1, "a": _SAMPLE, "b": _SAMPLE}),
    "align": (ask_aligned, {"original_instruction": "Q?", "original_input": "",
                            "original_output": "A.", "revised_instruction": "Q, exactly?",
                            "revised_input": ""}),
}


@pytest.mark.parametrize("task", list(_HELPERS))
async def test_each_typed_helper_keeps_asks_defaults_and_reports_cut_offs(task: str) -> None:
    """Every helper: two re-asks by default, the configured limit unfitted by default,
    and an answer cut at the limit reported to the caller's hook with the task's name."""
    helper, kwargs = _HELPERS[task]
    empty = Finished("", "stop")
    client = BookkeepingClient(empty, empty, empty, empty)
    with pytest.raises(UnparseableOutput):
        await helper(client, max_tokens=8192, **kwargs)
    assert client.limits == [8192] * 3
    cut: list[str] = []
    client = BookkeepingClient(Finished("Well,", "length"), Finished("Well,", "length"))
    with pytest.raises(TruncatedOutput):
        await helper(client, max_tokens=50, on_truncated=cut.append, **kwargs)
    assert cut == [task, task]
