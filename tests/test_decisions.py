"""The refine ⇄ review decisions as a table: the judge's verdicts are data, the outcomes spec.

Each case scripts what the pairwise judge says in every round — ``A`` (the original
wins), ``B`` (the revision wins), ``Tie``, or ``?`` (an answer with no readable winner)
and, under position swap, in both orders — and states, as literals, what the pipeline
must do: converge on B or Tie; requeue on A with the judge's explanation added to the
feedback set that the next round's refine request carries; at the round limit keep the
last revision, the original, or drop, as the policy says. The items are public texts
(``examples/dolly_sample.jsonl``); every model answer is made from its request, so no
answer is the value a test then asserts.

The stages run in-process (:class:`iterrefine.testing.StageKit`: the real stage
handlers, LLM client and parsers); :func:`drive` moves the item from stage to stage as
the output topics say, as the broker would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from iterrefine.item.model import Item
from iterrefine.runtime import Output
from iterrefine.testing import Reply, ScriptedRequest, StageKit, make_item, only

pytestmark = pytest.mark.unit

DOLLY = Path(__file__).parent.parent / "examples" / "dolly_sample.jsonl"
STAGE_OF_TOPIC = {"items.refine": "refine", "items.review": "review", "items.align": "align"}
#: An answer to the review prompt that names no winner.
UNREADABLE = "Both versions have merits and flaws; neither is clearly better."
EVALUATION = ("Score: 6\n\nEvaluation: the answer is correct but leaves out the context.\n\n"
              "Suggestions:\n1. Name the expected form of the answer.\n2. Keep the context.")


def dolly(index: int) -> Item:
    """Record ``index`` of the public Dolly sample, as ingest makes it, routed low."""
    rows = DOLLY.read_text().splitlines()
    record = json.loads(rows[index])
    return make_item(instruction=record["instruction"], input=record["input"],
                     output=record["output"], quality="low")


def revision_of(instruction: str, number: int) -> str:
    """What the scripted refiner writes in round ``number`` for an original instruction."""
    return f"{instruction} (Round {number}: answer in one sentence and name the source.)"


def revised_input(text: str, number: int) -> str:
    """What the scripted refiner makes of the input: an empty input stays empty."""
    return f"{text}\n(Context kept for round {number}.)" if text else ""


def explanation(number: int, order: str) -> str:
    """What the scripted judge explains in round ``number``, in the ``first`` or
    ``swapped`` order of the samples."""
    return f"Round {number}, {order} order: the other sample keeps the facts the task needs."


def answer_to(instruction: str, input: str) -> str:
    """What the scripted backbone answers (its request is the instruction, then the input)."""
    asked = f"{instruction}\n\n{input}" if input else instruction
    return f"A short answer to: {asked}"


Verdict = str | tuple[str, ...]


class Judge:
    """The scripted models. The review verdict of each round is data: ``verdicts[n - 1]``
    is round n's, a string for one order or ``(first, swapped)`` under position swap,
    each ``A``, ``B``, ``Tie`` or ``?``."""

    def __init__(self, item: Item, verdicts: list[Verdict]) -> None:
        self.original = item.original.instruction
        self.verdicts = verdicts
        self.reviews: dict[int, list[str]] = {}

    def answers(self) -> dict[str, Any]:
        return {"answer": self.answer, "evaluate": EVALUATION, "refine": self.refine,
                "review": self.review, "align": self.align}

    def answer(self, request: ScriptedRequest) -> str:
        return f"A short answer to: {request['instruction']}"

    def refine(self, request: ScriptedRequest) -> str:
        return (f"instruction_new: {revision_of(request['instruction'], request.round)}\n"
                f"input_new: {revised_input(request['input'], request.round)}")

    def review(self, request: ScriptedRequest) -> str | Reply:
        order = "first" if request["A"]["instruction"] == self.original else "swapped"
        self.reviews.setdefault(request.round, []).append(order)
        scripted = self.verdicts[request.round - 1]
        orders = (scripted,) if isinstance(scripted, str) else scripted
        winner = orders[0 if order == "first" else 1]
        if winner == "?":
            return UNREADABLE
        return f"Winner: {winner}\nExplanation: {explanation(request.round, order)}"

    def align(self, request: ScriptedRequest) -> str:
        return f"Output:\n{request['original_output']} (for: {request['revised_instruction']})"


async def drive(kit: StageKit, item: Item) -> tuple[Output, list[tuple[str, str]]]:
    """Refine the item and follow it as the stages route it, until it leaves the loop;
    returns the last output and every (topic, outcome) it passed."""
    topic, hops = "items.refine", []
    while True:
        out = only(await kit.handle(STAGE_OF_TOPIC[topic], item))
        hops.append((out.topic, out.outcome_label))
        topic, item = out.topic, out.item
        if topic not in STAGE_OF_TOPIC:
            return out, hops


def expected_hops(case: Case) -> list[tuple[str, str]]:
    """The (topic, outcome) path a case's ending implies, round by round."""
    hops: list[tuple[str, str]] = []
    for number in range(1, len(case.winners) + 1):
        hops.append(("items.review", "review"))
        if number < len(case.winners):
            hops.append(("items.refine", "requeued"))
        elif case.converged:
            hops.append(("items.align", "align"))
        else:
            ending = {"refined": "items.align", "unrefined": "items.curated",
                      "dropped": "items.rejected"}[case.status]
            hops.append((ending, "exhausted"))
    if case.status == "refined":
        hops.append(("items.curated", "curated"))
    return hops


#: Limits unlike the defaults, so a request that does not take its task's configured
#: limit shows (fitting to the item is off there: tests/test_decision_edges.py has it).
LIMITS = {"answer": 1500, "score": 1600, "evaluate": 1700, "refine": 3100, "review": 3200,
          "align": 3300}


def rounds_observed(kit: StageKit, outcome: str) -> tuple[float, float]:
    """(items, rounds summed) of the refine-rounds histogram for ``outcome``."""
    registry = kit.metrics.registry
    labels = {"outcome": outcome}
    return (registry.get_sample_value("iterrefine_refine_rounds_count", labels) or 0.0,
            registry.get_sample_value("iterrefine_refine_rounds_sum", labels) or 0.0)


@dataclass(frozen=True)
class Case:
    verdicts: list[Verdict]
    #: Where the item ends and how: terminal topic, status, ``converged``.
    topic: str
    status: str
    converged: bool | None
    #: Winner recorded per round (``none`` = unreadable).
    winners: list[str]
    #: Per round, the (round, order) of every explanation its refine request sent.
    feedback: list[list[tuple[int, str]]]
    #: The round whose revision is the final instruction (0 = the original).
    kept: int
    policy: str = "keep_last_revision"
    swap: bool = False
    max_rounds: int = 3
    #: Review requests per round (re-asks of unreadable verdicts included).
    reviews: list[int] = field(default_factory=list)


F, S = "first", "swapped"
CASES = {
    "B wins round 1": Case(["B"], "items.curated", "refined", True, ["B"], [[]], 1,
                           reviews=[1]),
    "a tie converges": Case(["Tie"], "items.curated", "refined", True, ["Tie"], [[]], 1),
    "A then B: requeued with the explanation": Case(
        ["A", "B"], "items.curated", "refined", True, ["A", "B"], [[], [(1, F)]], 2),
    "A, A, Tie: the feedback set grows": Case(
        ["A", "A", "Tie"], "items.curated", "refined", True, ["A", "A", "Tie"],
        [[], [(1, F)], [(1, F), (2, F)]], 3),
    "A thrice, keep_last_revision: round 3 aligned": Case(
        ["A", "A", "A"], "items.curated", "refined", False, ["A", "A", "A"],
        [[], [(1, F)], [(1, F), (2, F)]], 3),
    "A thrice, keep_original": Case(
        ["A", "A", "A"], "items.curated", "unrefined", False, ["A", "A", "A"],
        [[], [(1, F)], [(1, F), (2, F)]], 0, policy="keep_original"),
    "A thrice, drop": Case(
        ["A", "A", "A"], "items.rejected", "dropped", False, ["A", "A", "A"],
        [[], [(1, F)], [(1, F), (2, F)]], 0, policy="drop"),
    "one round allowed: A at the limit": Case(
        ["A", "B"], "items.curated", "refined", False, ["A"], [[]], 1, max_rounds=1),
    "unreadable, then B: a lost round with no critique": Case(
        ["?", "B"], "items.curated", "refined", True, ["none", "B"], [[], []], 2,
        reviews=[2, 1]),
    "A, unreadable, A: the last readable revision is kept": Case(
        ["A", "?", "A"], "items.curated", "refined", False, ["A", "none", "A"],
        [[], [(1, F)], [(1, F)]], 3),
    "unreadable thrice, keep_original": Case(
        ["?", "?", "?"], "items.curated", "unrefined", False, ["none"] * 3, [[], [], []], 0,
        policy="keep_original"),
    "swap: B first, A swapped: the revision wins both orders": Case(
        [("B", "A")], "items.curated", "refined", True, ["B"], [[]], 1, swap=True,
        reviews=[2]),
    "swap: B first, Tie swapped: a tie": Case(
        [("B", "Tie")], "items.curated", "refined", True, ["Tie"], [[]], 1, swap=True),
    "swap: Tie first, A swapped: a tie": Case(
        [("Tie", "A")], "items.curated", "refined", True, ["Tie"], [[]], 1, swap=True),
    "swap: B both orders loses, with the swapped explanation": Case(
        [("B", "B"), ("B", "A")], "items.curated", "refined", True, ["A", "B"],
        [[], [(1, S)]], 2, swap=True, reviews=[2, 2]),
    "swap: A first is a loss without asking again": Case(
        [("A", "B"), ("Tie", "Tie")], "items.curated", "refined", True, ["A", "Tie"],
        [[], [(1, F)]], 2, swap=True, reviews=[1, 2]),
    "swap: unreadable swapped order loses the round": Case(
        [("B", "?"), ("A",), ("A",)], "items.curated", "unrefined", False, ["none", "A", "A"],
        [[], [], [(2, F)]], 0, swap=True, policy="keep_original", reviews=[3, 1, 1]),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_review_verdicts_decide_the_items_path(name: str) -> None:
    """Each table row: the verdicts as data, the outcome, rounds and feedback sets as spec."""
    case = CASES[name]
    item = dolly(list(CASES).index(name) % 12)
    judge = Judge(item, case.verdicts)
    async with StageKit(judge.answers(), pipeline={
        "max_rounds": case.max_rounds, "exhausted_policy": case.policy,
        "position_swap": case.swap, "parse_retries": 1, "rescore_refined": False,
        "max_tokens": LIMITS, "fit_max_tokens": False,
    }) as kit:
        out, hops = await drive(kit, item)
    final = out.item
    assert (out.topic, final.status, final.converged) == (case.topic, case.status,
                                                          case.converged)
    assert hops == expected_hops(case)
    assert [r.winner for r in final.rounds] == case.winners
    assert final.round == len(case.winners)
    original = item.original
    numbers = range(1, len(case.winners) + 1)
    revisions = [revision_of(original.instruction, n) for n in numbers]
    inputs = [revised_input(original.input, n) for n in numbers]
    assert [(r.instruction, r.input) for r in final.rounds] == list(
        zip(revisions, inputs, strict=True))
    assert (final.instruction, final.input) == (
        (revisions[case.kept - 1], inputs[case.kept - 1]) if case.kept
        else (original.instruction, original.input))
    assert final.feedback is None or case.status != "refined"
    converged_rounds = (1.0, float(final.round)) if case.converged else (0.0, 0.0)
    assert rounds_observed(kit, "converged") == converged_rounds
    exhausted_rounds = (0.0, 0.0) if case.converged else (1.0, float(final.round))
    assert rounds_observed(kit, "exhausted") == exhausted_rounds
    for request in kit.requests:
        assert request.max_tokens == LIMITS[request.task]
    # The feedback set each round's refine request carried, and the item's record of it.
    expected = [[explanation(n, order) for n, order in sent] for sent in case.feedback]
    sent = [request.data.get("feedback_set", []) for request in kit.script.of("refine")]
    assert sent == expected
    assert [list(r.feedback_set) for r in final.rounds] == expected
    (graded,) = kit.script.of("evaluate")  # once, against the real reference output
    assert graded.data == {"instruction": original.instruction, "input": original.input,
                           "reference_output": original.output,
                           "candidate_answer": answer_to(original.instruction, original.input)}
    for request in kit.script.of("refine"):  # every round rewrites the original
        assert (request["instruction"], request["input"]) == (original.instruction,
                                                            original.input)
        assert request["reference_output"] == original.output
        assert request["backbone_answer"] == answer_to(original.instruction, original.input)
    for request in kit.script.of("review"):
        first = request["A"]["instruction"] == original.instruction
        sides = (request["A"], request["B"]) if first else (request["B"], request["A"])
        number = request.round
        assert sides[0] == {"instruction": original.instruction, "input": original.input,
                            "answer": answer_to(original.instruction, original.input)}
        revised = (revisions[number - 1], inputs[number - 1])
        assert sides[1] == {"instruction": revised[0], "input": revised[1],
                            "answer": answer_to(*revised)}
        assert final.rounds[number - 1].backbone_answer == answer_to(*revised)
    if case.reviews:
        assert [len(judge.reviews.get(n, [])) for n in range(1, len(case.reviews) + 1)] == (
            case.reviews)
    # The ending's bookkeeping: refined items went through align and say so.
    if case.status == "refined":
        assert final.output_aligned and final.output.startswith(item.original.output)
        assert final.output.endswith(f"(for: {final.instruction})")
        if case.converged:
            assert final.status_reason == ""
        else:
            assert final.status_reason == (f"exhausted: no revision won in "
                                           f"{len(case.winners)} rounds; last revision "
                                           f"(round {case.kept}) aligned")
    else:
        assert final.output == item.original.output and not final.output_aligned
        why = {"unrefined": "; original kept", "dropped": ""}[case.status]
        assert final.status_reason == f"no revision won in {len(case.winners)} rounds{why}"
