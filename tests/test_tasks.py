"""The ask layer: build the prompt, call the ChatClient seam, parse, re-ask when unreadable."""

from __future__ import annotations

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
    ask_evaluation,
    ask_revision,
    ask_score,
    ask_verdict,
)
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
    with pytest.raises(ValueError):
        await ask(client, "nope", {})
    with pytest.raises(ValueError):
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
