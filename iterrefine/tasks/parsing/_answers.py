"""What each task's answer means once read, and the JSON schemas for structured output.

The schemas follow docs/llm-contract.md and the subset that OpenAI's strict mode,
vLLM and llama.cpp all accept: every property required, no additional properties, and
no numeric bounds (ranges are clamped by the parsers instead). The judges' commentary
strings carry ``maxLength`` (and suggestions ``maxItems``): llama.cpp's grammar enforces
them, so a verbose small model's ``reason`` cannot run past ``max_tokens`` and cut the
whole JSON answer off; ``json_schema`` requests drop these keys
(:func:`iterrefine.llm._dialect.response_format`). Content fields (revisions, outputs)
are never bounded: cutting them would lose data.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from iterrefine.item.model import Scores

Verdict = Literal["high", "low"]
Winner = Literal["A", "B", "Tie"]


class ScoreAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """IQD judge: usable or not (and why), 1–10 per dimension, high/low verdict.

    The dimension scores are ``None`` only for an unusable item whose judge gave none.
    """

    usable: bool
    reason: str
    correctness: int | None
    completeness: int | None
    clarity: int | None
    compliance: int | None
    reasoning: int | None
    verdict: Verdict
    justification: str
    #: The paper's task filter: the item involves reasoning steps or logical inference
    #: (``None`` when the answer leaves it out).
    involves_reasoning: bool | None = None

    @property
    def scores(self) -> Scores | None:
        """The dimension scores as the item model's :class:`Scores`, if all are present."""
        if (
            self.correctness is None
            or self.completeness is None
            or self.clarity is None
            or self.compliance is None
            or self.reasoning is None
        ):
            return None
        return Scores(
            correctness=self.correctness,
            completeness=self.completeness,
            clarity=self.clarity,
            compliance=self.compliance,
            reasoning=self.reasoning,
        )


class EvaluationAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """FIR evaluate: the backbone answer's grade (1–10), the judge's text, its suggestions."""

    score: int
    evaluation: str
    suggestions: tuple[str, ...]


class RevisionAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """FIR refine: the revised instruction and input (``""`` when the input is empty)."""

    instruction: str
    input: str


class VerdictAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """FIR review: which sample won (A = first, B = second, or Tie) and why."""

    winner: Winner
    explanation: str


class AlignedAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """OA: the reference output rewritten for the revised instruction/input."""

    output: str


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


_SCORE_1_10: Final = {"type": "integer", "description": "1 (very poor) to 10 (excellent)"}


def _commentary(max_chars: int, description: str | None = None) -> dict[str, Any]:
    """A judge's free-text field, bounded where the server's grammar can enforce it."""
    field: dict[str, Any] = {"type": "string", "maxLength": max_chars}
    if description is not None:
        field["description"] = description
    return field

#: JSON schemas for ``response_format={"type": "json_schema", ...}``, per task; the
#: ``answer`` task is free text and has none.
SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "score": _object(
        {
            "usable": {"type": "boolean"},
            "reason": _commentary(300),
            "correctness": _SCORE_1_10,
            "completeness": _SCORE_1_10,
            "clarity": _SCORE_1_10,
            "compliance": _SCORE_1_10,
            "reasoning": _SCORE_1_10,
            "verdict": {"type": "string", "enum": ["high", "low"]},
            "justification": _commentary(400),
            "involves_reasoning": {"type": "boolean"},
        }
    ),
    "evaluate": _object(
        {
            "score": _SCORE_1_10,
            "evaluation": _commentary(800),
            "suggestions": {"type": "array", "items": _commentary(300), "maxItems": 5},
        }
    ),
    "refine": _object(
        {
            "instruction_new": {"type": "string"},
            "input_new": {"type": "string", "description": "empty when the input is empty"},
        }
    ),
    "review": _object(
        {
            "winner": {"type": "string", "enum": ["A", "B", "Tie"]},
            "explanation": _commentary(800, "at most 100 words"),
        }
    ),
    "align": _object({"output": {"type": "string"}}),
}
