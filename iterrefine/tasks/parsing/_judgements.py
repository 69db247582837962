"""Parsers of the judge's verdicts: score (IQD), evaluate and review (FIR).

Each accepts the JSON-schema form first, then the free-text form, and returns its
answer struct or raises :class:`UnparseableOutput` — never anything else, whatever the
text (a property test pins this).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

from iterrefine.errors import UnparseableOutput
from iterrefine.tasks.parsing._answers import (
    EvaluationAnswer,
    ScoreAnswer,
    Verdict,
    VerdictAnswer,
    Winner,
)
from iterrefine.tasks.parsing._scaffolding import AnswerContext, copied_check, reject_scaffolding
from iterrefine.tasks.parsing._text import (
    STOP,
    Label,
    Sections,
    find_json_object,
    first_key,
    inline_to_lines,
    json_text,
    label_pattern,
    list_items,
    one_line,
    prepare,
    scale_value,
    scale_value_rest,
    split_sections,
    strip_emphasis,
    unbracket,
    unparseable,
)

_DIMENSIONS: Final = ("correctness", "completeness", "clarity", "compliance", "reasoning")

# Labels no answer of ours uses as its own field but a prompt shows (data keys, other
# tasks' answers): a model echoing them after its answer ends the field there.
_DATA_KEY_LABELS: Final = (
    r"instruction[ \t_-]new", r"input[ \t_-]new", r"reference[ \t_]output",
    r"candidate[ \t_]answer",
    r"reviewer[ \t_]feedback", r"original[ \t_](?:instruction|input|output)",
    r"revised[ \t_](?:instruction|input)",
)


def _stop(*spellings: str) -> Label:
    return Label(STOP, (*_DATA_KEY_LABELS, *spellings))


# ---------------------------------------------------------------- score

_SCORE_LABELS: Final = (
    Label("usable", (r"usable\??", r"usability", r"is\s+usable\??")),
    Label("reason", (r"reason", r"usability\s+reason")),
    Label("correctness", (r"correctness",), value_needs_no_separator=True),
    Label("completeness", (r"completeness",), value_needs_no_separator=True),
    Label("clarity", (r"clarity",), value_needs_no_separator=True),
    Label(
        "compliance",
        (
            r"(?:instruction(?:\s*/\s*format)?\s+|format\s+)?compliance",
            r"instruction[\s-]following",
        ),
        value_needs_no_separator=True,
    ),
    Label("reasoning", (r"reasoning(?:\s+quality)?",), value_needs_no_separator=True),
    Label("involves_reasoning", (r"needs\s+reasoning\??", r"involves\s+reasoning\??",
                                 r"reasoning\s+task\??")),
    Label("verdict", (r"(?:overall\s+)?verdict", r"overall\s+quality", r"quality")),
    Label("justification", (r"justification", r"rationale")),
    _stop(r"winner", r"explanation", r"evaluation", r"suggestions", r"instruction", r"input",
          r"output"),
)
_SCORE_PATTERN: Final = label_pattern(_SCORE_LABELS)
_YES: Final = re.compile(r"(?:yes|true|y|usable)\b", re.IGNORECASE)
_NO: Final = re.compile(r"(?:no|false|n|not\b|unusable)\b", re.IGNORECASE)
_VERDICT_WORD: Final = re.compile(r"\b(high|low)\b", re.IGNORECASE)


def _usable(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = json_text(value)
    if not text:
        return None
    text = unbracket(strip_emphasis(text)) or ""
    text = text.lstrip("*_[(\"'` ")
    if _NO.match(text):
        return False
    if _YES.match(text):
        return True
    return None


def _verdict(value: Any) -> Verdict | None:
    text = json_text(value)
    text = unbracket(text) if text else text
    match = _VERDICT_WORD.search(text) if text else None
    if match is None:
        return None
    return "high" if match.group(1).lower() == "high" else "low"


def _score_answer(task: str, raw: str, fields: dict[str, Any]) -> ScoreAnswer:
    """Validate the fields read from either form into a :class:`ScoreAnswer`."""
    scores = {name: scale_value(fields.get(name)) for name in _DIMENSIONS}
    verdict = _verdict(fields.get("verdict"))
    usable = _usable(fields.get("usable"))
    complete = verdict is not None and all(v is not None for v in scores.values())
    if usable is None:
        if not complete:
            raise unparseable(task, "no usable yes/no", raw)
        usable = True  # a full set of scores and a verdict is an answer about a usable item
    if usable and not complete:
        missing = [name for name, v in scores.items() if v is None]
        missing += [] if verdict is not None else ["verdict"]
        raise unparseable(task, f"missing or unreadable: {', '.join(missing)}", raw)
    return ScoreAnswer(
        usable=usable,
        reason=one_line(json_text(fields.get("reason")) or ""),
        correctness=scores["correctness"],
        completeness=scores["completeness"],
        clarity=scores["clarity"],
        compliance=scores["compliance"],
        reasoning=scores["reasoning"],
        verdict=verdict or "low",
        justification=one_line(json_text(fields.get("justification")) or ""),
        involves_reasoning=_usable(fields.get("involves_reasoning")),
    )


def _score_fields(sections: Sections) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key in ("usable", "involves_reasoning", "verdict", *_DIMENSIONS):
        # The first occurrence whose value reads: prose may mention a field name earlier.
        check = (
            _usable if key in ("usable", "involves_reasoning")
            else _verdict if key == "verdict" else scale_value
        )
        for section in sections.all(key):
            if check(section.head) is not None:
                fields[key] = section.head
                break
    for key in ("reason", "justification"):
        text_section = sections.first(key)
        if text_section is not None:
            fields[key] = text_section.text
    return fields


def parse_score(text: str, context: AnswerContext | None = None) -> ScoreAnswer:
    """Read an IQD judgement (``Usable: yes`` … ``Justification: …`` or its JSON form)."""
    body = prepare(text)
    reject_scaffolding("score", text, body, context)
    copied = copied_check(context)
    obj = find_json_object(body, ("verdict", "usable", *_DIMENSIONS), copied=copied)
    if obj is not None:
        try:
            return _score_answer("score", text, obj)
        except UnparseableOutput:
            pass  # a stray JSON object; the labelled lines may still be there
    sections = split_sections(body, _SCORE_LABELS, _SCORE_PATTERN, copied=copied)
    fields = _score_fields(sections)
    if not all(key in fields for key in ("verdict", *_DIMENSIONS)):
        inline = inline_to_lines(body, _SCORE_LABELS, copied=copied)
        inline_sections = split_sections(inline, _SCORE_LABELS, _SCORE_PATTERN, copied=copied)
        fields = _score_fields(inline_sections) | fields
    return _score_answer("score", text, fields)


# ---------------------------------------------------------------- evaluate

_EVALUATION_LABELS: Final = (
    Label(
        "score", (r"(?:overall\s+|final\s+)?(?:score|rating|grade)",), value_needs_no_separator=True
    ),
    Label("evaluation", (r"evaluation", r"assessment", r"analysis", r"feedback")),
    Label(
        "suggestions",
        (
            r"suggestions?(?:\s+for\s+improvement)?",
            r"improvement\s+suggestions",
            r"recommendations",
            r"improvements",
        ),
    ),
    _stop(r"winner", r"verdict", r"usable", r"instruction", r"input", r"output"),
)
_EVALUATION_PATTERN: Final = label_pattern(_EVALUATION_LABELS)
_SCORE_IN_PROSE: Final = (
    re.compile(
        r"\b(?:score|rating|grade)\b[^\d\n]{0,24}?(\d{1,3}(?:\.\d+)?(?:\s*(?:/|out\s+of)\s*\d{1,3})?)"
        r"(?!\s*[-–]\s*\d)",
        re.IGNORECASE,
    ),
    re.compile(r"\b(\d{1,2}(?:\.\d+)?\s*(?:/|out\s+of)\s*10)\b", re.IGNORECASE),
)


def _suggestions(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, list):
        items = [json_text(v) for v in value]
        return tuple(one_line(v) for v in items if v)[:10]
    text = json_text(value)
    return None if text is None else list_items(text)


def _evaluation_from_json(raw: str, obj: dict[str, Any]) -> EvaluationAnswer:
    score = scale_value(obj.get("score"))
    evaluation = json_text(first_key(obj, "evaluation", "explanation", "feedback"))
    suggestions = _suggestions(obj.get("suggestions", []))
    if score is None or evaluation is None or suggestions is None or not evaluation.strip():
        raise unparseable(
            "evaluate", "JSON without a readable score, evaluation and suggestions", raw
        )
    return EvaluationAnswer(score=score, evaluation=evaluation, suggestions=suggestions)


def _own_text(body: str, copied: Callable[[str], bool] | None) -> str:
    """``body`` without the lines that repeat item text: what prose fallbacks may read."""
    if copied is None:
        return body
    return "\n".join(line for line in body.split("\n") if not copied(line))


def parse_evaluation(text: str, context: AnswerContext | None = None) -> EvaluationAnswer:
    """Read an evaluation (``Score: 6`` / ``Evaluation:`` / ``Suggestions:`` or JSON)."""
    body = prepare(text)
    reject_scaffolding("evaluate", text, body, context)
    copied = copied_check(context)
    obj = find_json_object(body, ("score",), copied=copied)
    if obj is not None:
        try:
            return _evaluation_from_json(text, obj)
        except UnparseableOutput:
            if "evaluation" in obj and not (json_text(obj["evaluation"]) or "").strip():
                raise  # the answer's own JSON, with its evaluation left empty

    sections = split_sections(body, _EVALUATION_LABELS, _EVALUATION_PATTERN, copied=copied)
    readable = (s for s in sections.all("score") if scale_value(s.head) is not None)
    score_section = next(readable, None)
    if score_section is not None:
        score = scale_value(score_section.head)
    else:
        own = _own_text(body, copied)
        found = (pattern.search(own) for pattern in _SCORE_IN_PROSE)
        match = next((m for m in found if m is not None), None)
        score = scale_value(match.group(1)) if match is not None else None
    if score is None:
        raise unparseable("evaluate", "no score", text)
    labelled = sections.first("evaluation")
    if labelled is not None:
        evaluation = labelled.text
    elif score_section is not None:
        # ``Score: 9/10 - clear and correct`` or the grade's reasons under the score line.
        rest = scale_value_rest(score_section.head)
        evaluation = "\n".join(part for part in (rest, score_section.body) if part)
    else:  # the grade given in prose: that prose is the evaluation
        evaluation = _own_text(body, copied)
    listed = sections.first("suggestions")
    suggestions = list_items(listed.text) if listed is not None else ()
    if not evaluation.strip():
        # A bare grade gives the refiner nothing to work from: not an evaluation.
        raise unparseable("evaluate", "a score without an evaluation", text)
    return EvaluationAnswer(score=score, evaluation=evaluation.strip(), suggestions=suggestions)


# ---------------------------------------------------------------- review

_REVIEW_LABELS: Final = (
    Label(
        "winner",
        (
            r"(?:the\s+)?winner",
            r"(?:final\s+)?verdict",
            r"better\s+sample",
            r"preferred(?:\s+sample)?",
        ),
        value_needs_no_separator=True,
    ),
    Label("explanation", (r"explanation", r"reason(?:ing)?", r"rationale", r"justification")),
    _stop(r"score", r"evaluation", r"suggestions", r"usable", r"correctness"),
)
_REVIEW_PATTERN: Final = label_pattern(_REVIEW_LABELS)
_WINNER_VALUE: Final = re.compile(
    r"[\s*_\[(\"'`]*(?:(?:sample|response|output|option|version|assistant)\s+)?"
    r"(a|b|tie|draw|equal|both|neither)(?![\w-])",
    re.IGNORECASE,
)
_EXPLANATION_LEAD: Final = re.compile(
    r"^[\s.,;:)\]*_-]*(?:(?:explanation|reason(?:ing)?|rationale|because)\b[\s*_]*:?)?\s*",
    re.IGNORECASE,
)
_WINNER_IN_PROSE: Final = (
    re.compile(r"\[\[(A|B|Tie|C)\]\]", re.IGNORECASE),
    re.compile(
        r"\b(?:winner|verdict)\s+is\s+(?:sample\s+|response\s+)?(A|B|a\s+tie|tie)\b", re.IGNORECASE
    ),
    re.compile(r"\b(?:sample|response)\s+(A|B)\s+wins\b", re.IGNORECASE),
    re.compile(r"\b(?:it\s+is|it's|this\s+is)\s+(a\s+tie)\b", re.IGNORECASE),
)


def _winner_word(match: re.Match[str]) -> Winner:
    word = match.group(1).lower()
    return "A" if word == "a" else "B" if word == "b" else "Tie"


def _winner(value: Any) -> Winner | None:
    text = json_text(value)
    text = unbracket(text) if text else text
    match = _WINNER_VALUE.match(text) if text else None
    return None if match is None else _winner_word(match)


def _prose_winner(text: str) -> Winner | None:
    for pattern in _WINNER_IN_PROSE:
        match = pattern.search(text)
        if match is not None:
            word = match.group(1).lower()
            if word in ("a", "b"):
                return "A" if word == "a" else "B"
            return "Tie"  # "tie", "a tie", and [[C]] (the MT-Bench judge's tie)
    return None


def parse_verdict(text: str, context: AnswerContext | None = None) -> VerdictAnswer:
    """Read a pairwise verdict (``Winner: B`` / ``Explanation: …``, or JSON)."""
    body = prepare(text)
    reject_scaffolding("review", text, body, context)
    copied = copied_check(context)
    obj = find_json_object(body, ("winner",), copied=copied)
    if obj is not None:
        winner = _winner(obj.get("winner"))
        explanation = json_text(first_key(obj, "explanation", "reason", "rationale"))
        if winner is not None:
            return VerdictAnswer(winner=winner, explanation=one_line(explanation or ""))
    # Line by line first; then with "Label:" split off mid-line for one-line answers.
    for candidate in (body, inline_to_lines(body, _REVIEW_LABELS, copied=copied)):
        sections = split_sections(candidate, _REVIEW_LABELS, _REVIEW_PATTERN, copied=copied)
        for labelled in sections.all("winner"):
            head = unbracket(labelled.head) or ""
            match = _WINNER_VALUE.match(head)
            if match is None:
                continue
            explained = sections.first("explanation")
            if explained is not None:
                explanation = explained.text
            else:  # reasons without a label: beside, under or before the winner line
                beside = _EXPLANATION_LEAD.sub("", head[match.end() :])
                explanation = beside or labelled.body or "\n".join(sections.preamble)
            return VerdictAnswer(winner=_winner_word(match), explanation=one_line(explanation))
    winner = _prose_winner(_own_text(body, copied))
    if winner is None:
        raise unparseable("review", "no winner (A, B or Tie)", text)
    return VerdictAnswer(winner=winner, explanation=one_line(body))
