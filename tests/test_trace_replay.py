"""The paper's loop on the broker, with recorded-style answers and the verdicts as data.

The model texts come from the public examples: the real Llama-3.1-70B/8B texts of the
authors' published run (``examples/real_llm_outputs.jsonl``: backbone answer,
evaluation, revision, aligned output) for the two traced items, and answers made from
the request for Dolly items (``examples/dolly_sample.jsonl``). What the pairwise judge
decides is data, per item and round — A, B, Tie or an unreadable answer — and so is the
judge's verdict at scoring (high or low; reasoning yes, no or unsaid). The run is
``--preset paper`` (routing by threshold: the cluster quota is the selection track's
and tested with it) on the embedded broker, through :func:`iterrefine.testing.run_records`,
and the test states what the pipeline must make of each item.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from iterrefine.config import load_config
from iterrefine.item.model import Item
from iterrefine.tasks.prompts import PROMPT_VERSION
from iterrefine.testing import ScriptedLLM, ScriptedRequest, run_records

EXAMPLES = Path(__file__).parent.parent / "examples"
PANDURI = "Identify which instrument is string or woodwind: Panduri, Zurna"
CLOUD = "What is cloud computing in simple terms?"
JUDGED = ("Usable: yes\nReason: a real task with a correct answer\nCorrectness: {s}\n"
          "Completeness: {s}\nClarity: {s}\nCompliance: {s}\nReasoning: {s}\n{involves}"
          "Verdict: {verdict}\nJustification: the answer is {verdict} quality")
UNREADABLE = "Both versions have merits and flaws; neither is clearly better."
PAPER_LIMITS = {"answer": 2000, "score": 2000, "evaluate": 2048, "refine": 4096,
                "review": 4096, "align": 4096}


def recorded() -> dict[str, dict[str, Any]]:
    """The recorded texts per traced instruction, by kind."""
    traces: dict[str, dict[str, Any]] = {}
    for line in (EXAMPLES / "real_llm_outputs.jsonl").read_text().splitlines():
        record = json.loads(line)
        traces.setdefault(record["item"]["instruction"], {})[record["kind"]] = record
    return traces


def dolly(*indices: int) -> list[dict[str, str]]:
    rows = (EXAMPLES / "dolly_sample.jsonl").read_text().splitlines()
    return [json.loads(rows[i]) for i in indices]


#: Per original instruction: the judge at scoring (verdict, reasoning line) and the
#: pairwise verdicts, one per round.
class Plan:
    def __init__(self, verdict: str, involves: str | None, rounds: list[str]) -> None:
        self.verdict, self.involves, self.rounds = verdict, involves, rounds


class Models:
    """Answers every request of one run from the recorded texts and the plans."""

    def __init__(self, items: list[dict[str, str]], plans: list[Plan]) -> None:
        self.traces = recorded()
        self.items = {item["instruction"]: item for item in items}
        self.plans = {item["instruction"]: plan for item, plan in zip(items, plans, strict=True)}
        # The backbone's request is the instruction, then the input: map it back.
        self.asked = {self.request_text(i["instruction"], i["input"]): i["instruction"]
                      for i in items}

    @staticmethod
    def request_text(instruction: str, input: str) -> str:
        return f"{instruction}\n\n{input}" if input else instruction

    def revision(self, original: str, number: int) -> str:
        trace = self.traces.get(original)
        first = trace["revision_extracted"]["instruction_new"] if trace else (
            f"{original} Answer in two sentences and name your source.")
        return first if number == 1 else f"{first} (Revision {number}: keep it short.)"

    def explanation(self, original: str, number: int) -> str:
        return f"Round {number} of '{original[:30]}': Sample A states the task more precisely."

    def answers(self) -> dict[str, Any]:
        return {"score": self.score, "answer": self.answer, "evaluate": self.evaluate,
                "refine": self.refine, "review": self.review, "align": self.align}

    def score(self, request: ScriptedRequest) -> str:
        plan = self.plans[request["instruction"]]
        involves = "" if plan.involves is None else f"Involves reasoning: {plan.involves}\n"
        return JUDGED.format(s=9 if plan.verdict == "high" else 5, involves=involves,
                             verdict=plan.verdict)

    def answer(self, request: ScriptedRequest) -> str:
        original = self.asked.get(request["instruction"])
        trace = self.traces.get(original or "")
        if trace:
            return str(trace["backbone_answer"]["text"])
        return f"An answer to: {request['instruction'][:80]}"

    def evaluate(self, request: ScriptedRequest) -> str:
        trace = self.traces.get(request["instruction"])
        if trace:
            return str(trace["evaluation"]["text"])
        return ("Score: 6\n\nEvaluation: correct but thin.\n\nSuggestions:\n"
                "1. Ask for the reasoning.\n2. Name the expected length.")

    def refine(self, request: ScriptedRequest) -> str:
        revision = self.revision(request["instruction"], request.round)
        return f"instruction_new: {revision}\ninput_new: {request['input']}"

    def review(self, request: ScriptedRequest) -> str:
        original = request["A"]["instruction"]
        verdict = self.plans[original].rounds[request.round - 1]
        if verdict == "?":
            return UNREADABLE
        trace = self.traces.get(original)
        text = (trace["review_explanation"]["text"] if trace and verdict == "B"
                else self.explanation(original, request.round))
        return f"Winner: {verdict}\nExplanation: {text}"

    def align(self, request: ScriptedRequest) -> str:
        trace = self.traces.get(request["original_instruction"])
        if trace and request["revised_instruction"] == self.revision(
                request["original_instruction"], 1):
            return f"Output:\n{trace['aligned_output']['text']}"
        return f"Output:\n{request['original_output']} Aligned to: {request['revised_instruction']}"


@pytest.mark.slow
async def test_the_papers_loop_on_the_broker_decides_by_the_verdicts(broker: str) -> None:
    """Verdicts as data through the whole graph under --preset paper: converge on B or Tie,
    requeue on A with the explanation in the next feedback set, keep the last revision at
    the cap; the task filter and the high/low split; lineage on every item."""
    traces = recorded()
    items = [traces[PANDURI]["backbone_answer"]["item"], traces[CLOUD]["backbone_answer"]["item"],
             *dolly(2, 8, 11, 4, 10)]
    plans = [
        Plan("low", "yes", ["B"]),  # the recorded run's decision
        Plan("low", "yes", ["A", "Tie"]),  # lost once, then a tie converges
        Plan("low", "yes", ["A", "A", "A"]),  # never won: the last revision is kept
        Plan("low", "yes", ["?", "B"]),  # an unreadable verdict is a lost round
        Plan("high", "yes", []),  # high: kept as it is
        Plan("low", None, []),  # the judge does not say: the paper's filter drops it
        Plan("low", "no", []),  # no reasoning: dropped
    ]
    models = Models(items, plans)
    config = load_config(overrides={"preset": "paper",
                                    "pipeline": {"routing_policy": "threshold"}})
    async with ScriptedLLM(models.answers()) as llm:
        result = await run_records(items, llm=llm, config=config, bootstrap=broker,
                                   timeout_s=120)
    by_instruction: dict[str, Item] = {
        t.item.original.instruction: t.item for t in result.terminals.values() if t.item}
    assert len(by_instruction) == len(items) and not result.dead_letters

    def final(index: int) -> Item:
        return by_instruction[items[index]["instruction"]]

    def ending(item: Item) -> tuple[str, bool | None, list[str]]:
        return item.status, item.converged, [r.winner for r in item.rounds]

    assert ending(final(0)) == ("refined", True, ["B"])
    assert ending(final(1)) == ("refined", True, ["A", "Tie"])
    assert ending(final(2)) == ("refined", False, ["A", "A", "A"])
    assert ending(final(3)) == ("refined", True, ["none", "B"])
    assert ending(final(4)) == ("high", None, [])
    assert (final(5).status, final(5).status_reason) == ("rejected", "reasoning_unstated")
    assert (final(6).status, final(6).status_reason) == ("rejected", "not_reasoning")

    # The kept revision and its aligned output: the recorded ones where B won round 1.
    assert final(0).instruction == traces[PANDURI]["revision_extracted"]["instruction_new"]
    assert final(0).output == traces[PANDURI]["aligned_output"]["text"].strip()
    for index, kept in ((1, 2), (2, 3), (3, 2)):
        original = items[index]["instruction"]
        assert final(index).instruction == models.revision(original, kept)
        assert final(index).output.endswith(f"Aligned to: {models.revision(original, kept)}")
    assert final(2).status_reason.startswith("exhausted: no revision won in 3 rounds")

    # Requeued with the judge's explanation: the next refine request carried it, and the
    # round records the feedback set as sent. An unreadable verdict is no critique.
    def feedback_sent(index: int) -> list[list[str]]:
        original = items[index]["instruction"]
        return [r.data.get("feedback_set", []) for r in llm.script.of("refine")
                if r["instruction"] == original]

    first, second = (models.explanation(items[1]["instruction"], n) for n in (1, 2))
    assert feedback_sent(1) == [[], [first]]
    three = [models.explanation(items[2]["instruction"], n) for n in (1, 2)]
    assert feedback_sent(2) == [[], three[:1], three]
    assert feedback_sent(3) == [[], []]
    for index in (1, 2, 3):
        assert [list(r.feedback_set) for r in final(index).rounds] == feedback_sent(index)
    assert second not in str(final(1).rounds[1].feedback_set)

    # The paper's sampling and limits on the wire, and on every item its lineage.
    for request in llm.requests:
        assert request.body["temperature"] == 0.6
        assert request.max_tokens == PAPER_LIMITS[request.task]
    assert llm.script.count("score") == len(items)  # no re-score under the preset
    for item in by_instruction.values():
        provenance = item.provenance
        assert provenance.temperatures == {"strong": 0.6, "backbone": 0.6}
        assert (provenance.preset, provenance.prompt_version) == ("paper", PROMPT_VERSION)
        assert item.final_judgement is None
    assert {final(i).alignment_mode for i in range(4)} == {"complete"}
