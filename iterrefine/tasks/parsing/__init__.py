"""Reading model answers: one parser per task, tolerant of what real models write.

Each parser accepts the task's JSON-schema form (structured output) and its free-text
form from docs/llm-contract.md, plus what models do around them: prose before and after,
markdown bold, code fences, ``Score: 9`` / ``score - 9/10`` / ``Score: 9/10``, JSON
embedded in text, ``<think>…</think>`` preambles, ``<10>`` (the prompt's brackets
copied). Given the request's :class:`AnswerContext`, an answer reproducing the prompt's
scaffolding is unreadable and item text never acts as a label. Scores are clamped to 1–10. When an
answer really cannot be read, the parser raises
:class:`~iterrefine.errors.UnparseableOutput` — and never any other exception.
"""

from __future__ import annotations

from iterrefine.tasks.parsing._answers import (
    SCHEMAS,
    AlignedAnswer,
    EvaluationAnswer,
    RevisionAnswer,
    ScoreAnswer,
    Verdict,
    VerdictAnswer,
    Winner,
)
from iterrefine.tasks.parsing._judgements import parse_evaluation, parse_score, parse_verdict
from iterrefine.tasks.parsing._rewrites import clean_answer, parse_aligned, parse_revision
from iterrefine.tasks.parsing._scaffolding import AnswerContext

__all__ = [
    "SCHEMAS",
    "AlignedAnswer",
    "AnswerContext",
    "EvaluationAnswer",
    "RevisionAnswer",
    "ScoreAnswer",
    "Verdict",
    "VerdictAnswer",
    "Winner",
    "clean_answer",
    "parse_aligned",
    "parse_evaluation",
    "parse_revision",
    "parse_score",
    "parse_verdict",
]
