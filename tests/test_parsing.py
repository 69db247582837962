"""Parsers: the paper's real model outputs, the messy forms real models write, and fuzzing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iterrefine.errors import UnparseableOutput
from iterrefine.tasks.parsing import (
    SCHEMAS,
    AlignedAnswer,
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

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "real_llm_outputs.jsonl"


def real_outputs(kind: str) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in EXAMPLES.read_text().splitlines() if line.strip()]
    found = [row for row in rows if row["kind"] == kind]
    assert found, f"no {kind} rows in {EXAMPLES}"
    return found


SCORE_TEXT = """Usable: yes
Reason: The item is a clear factual question with a correct answer.
Correctness: 8
Completeness: 7
Clarity: 9
Compliance: 8
Reasoning: 7
Verdict: high
Justification: A clear instruction with a correct, complete answer."""


# ---------------------------------------------------------------- real outputs (paper run)


@pytest.mark.parametrize("row", real_outputs("evaluation"), ids=lambda r: r["item"]["instruction"])
def test_real_evaluation_parses(row: dict[str, Any]) -> None:
    """Llama-3.1-70B's evaluations read as a score, the evaluation text and 5 suggestions."""
    answer = parse_evaluation(row["text"])
    assert answer.score in (9, 10)
    assert answer.evaluation.startswith("The candidate answer")
    assert "Suggestions" not in answer.evaluation
    assert len(answer.suggestions) == 5
    assert all(s and not s[0].isdigit() for s in answer.suggestions)


def test_real_evaluation_panduri_is_score_10() -> None:
    """The Panduri/Zurna evaluation is score 10 with its five suggestions in order."""
    row = real_outputs("evaluation")[0]
    answer = parse_evaluation(row["text"])
    assert answer.score == 10
    assert answer.suggestions[0].startswith("Consider adding a brief description")
    assert answer.suggestions[4].startswith("If possible, provide sources")


@pytest.mark.parametrize("row", real_outputs("revision_extracted"))
def test_real_revision_in_contract_format_round_trips(row: dict[str, Any]) -> None:
    """The paper's revisions, written in the refine format, read back field for field."""
    text = f"instruction_new: {row['instruction_new']}\ninput_new: {row['input_new']}"
    assert parse_revision(text) == RevisionAnswer(
        instruction=row["instruction_new"], input=row["input_new"]
    )


@pytest.mark.parametrize("row", real_outputs("review_explanation"))
def test_real_review_explanation_with_winner_line(row: dict[str, Any]) -> None:
    """The judge's real explanations, under a Winner line, are kept whole (one line)."""
    answer = parse_verdict(f"Winner: B\nExplanation: {row['text']}")
    assert answer == VerdictAnswer(winner="B", explanation=row["text"])


@pytest.mark.parametrize("row", real_outputs("review_explanation"))
def test_real_review_explanation_alone_has_no_winner(row: dict[str, Any]) -> None:
    """An explanation that only praises "Sample B" names no winner: we do not guess one."""
    with pytest.raises(UnparseableOutput) as caught:
        parse_verdict(row["text"])
    assert caught.value.task == "review"
    assert caught.value.raw == row["text"]


@pytest.mark.parametrize("row", real_outputs("aligned_output"))
def test_real_aligned_output_bare_and_labelled(row: dict[str, Any]) -> None:
    """Real aligned outputs read the same bare (as the paper logged them) and after Output:."""
    assert parse_aligned(row["text"]).output == row["text"]
    assert parse_aligned(f"Output:\n{row['text']}").output == row["text"]


@pytest.mark.parametrize("row", real_outputs("backbone_answer"))
def test_real_backbone_answer_kept_verbatim(row: dict[str, Any]) -> None:
    """The backbone's real answers come back unchanged apart from outer whitespace."""
    assert clean_answer(row["text"]) == row["text"].strip()


# ---------------------------------------------------------------- score


def test_score_contract_format() -> None:
    """The score format of the contract reads into every field."""
    assert parse_score(SCORE_TEXT) == ScoreAnswer(
        usable=True,
        reason="The item is a clear factual question with a correct answer.",
        correctness=8,
        completeness=7,
        clarity=9,
        compliance=8,
        reasoning=7,
        verdict="high",
        justification="A clear instruction with a correct, complete answer.",
    )


def test_score_markdown_bold_and_mixed_separators() -> None:
    """Bold labels and values, ``- 7/10`` and ``Score: 9/10`` styles read as plain lines."""
    text = (
        "Here is my assessment.\n\n**Usable:** Yes\n**Reason**: fine\n- **Correctness:** 8/10\n"
        "Completeness - 7\nClarity: **9**\n**Instruction compliance:** 8\n"
        "Reasoning quality: 7/10\n**Verdict:** **High**\nJustification: good.\n\nHope this helps!"
    )
    answer = parse_score(text)
    assert (answer.correctness, answer.completeness, answer.clarity) == (8, 7, 9)
    assert (answer.compliance, answer.reasoning, answer.verdict) == (8, 7, "high")


def test_score_json_form_clamps_and_rescales() -> None:
    """The JSON form reads; 11 clamps to 10, 0 to 1, "4/5" rescales to 8, 7.5 rounds to 8."""
    obj = {
        "usable": True, "reason": "ok", "correctness": "4/5", "completeness": 7.5,
        "clarity": 11, "compliance": 0, "reasoning": 6, "verdict": "low", "justification": "x",
    }  # fmt: skip
    answer = parse_score(json.dumps(obj))
    assert (answer.correctness, answer.completeness, answer.clarity) == (8, 8, 10)
    assert (answer.compliance, answer.verdict) == (1, "low")


def test_score_one_line_answer() -> None:
    """Fields written on one line, comma-separated, are split apart."""
    text = (
        "Usable: yes, Reason: ok, Correctness: 8, Completeness: 7, Clarity: 9, "
        "Compliance: 8, Reasoning: 7, Verdict: low, Justification: vague instruction"
    )
    answer = parse_score(text)
    assert answer.verdict == "low" and answer.reasoning == 7
    assert answer.justification == "vague instruction"


def test_score_unusable_without_scores() -> None:
    """An unusable item may come without scores: they are None and the verdict low."""
    answer = parse_score("Usable: no\nReason: The output is empty.")
    assert answer.usable is False and answer.scores is None
    assert answer.verdict == "low" and answer.reason == "The output is empty."


def test_score_usable_with_a_missing_dimension_is_unparseable() -> None:
    """A usable item whose answer lacks a dimension is not guessed at."""
    text = SCORE_TEXT.replace("Clarity: 9\n", "")
    with pytest.raises(UnparseableOutput, match="clarity"):
        parse_score(text)


def test_score_scores_property_builds_model_scores() -> None:
    """``ScoreAnswer.scores`` gives the item model's Scores with its mean."""
    scores = parse_score(SCORE_TEXT).scores
    assert scores is not None and scores.mean == pytest.approx(7.8)


# ---------------------------------------------------------------- evaluate


def test_evaluation_score_dash_out_of_ten() -> None:
    """``score - 9/10`` reads as 9."""
    assert parse_evaluation("score - 9/10\n\nEvaluation: good").score == 9


def test_evaluation_score_slash_ten() -> None:
    """``Score: 9/10`` reads as 9, and a reason beside it becomes the evaluation."""
    answer = parse_evaluation("Score: 9/10 - accurate and concise")
    assert (answer.score, answer.evaluation) == (9, "accurate and concise")


def test_evaluation_bold_label() -> None:
    """``**Score:** 8`` reads as 8 and ``**Evaluation:**`` as the text."""
    text = "**Score:** 8\n\n**Evaluation:** mostly right\n\n**Suggestions:**\n- a"
    answer = parse_evaluation(text)
    assert (answer.score, answer.evaluation, answer.suggestions) == (8, "mostly right", ("a",))


def test_evaluation_think_preamble_is_ignored() -> None:
    """A ``<think>`` block, even one mentioning another score, is dropped before reading."""
    text = "<think>Maybe Score: 2? No, it is better.</think>\nScore: 7\n\nEvaluation: decent"
    assert parse_evaluation(text).score == 7


def test_evaluation_json_embedded_in_prose_and_fence() -> None:
    """JSON inside a code fence with prose around it is the answer."""
    text = (
        'Sure, here it is:\n```json\n{"score": "6/10", "evaluation": "partial", '
        '"suggestions": ["be specific", "add an example"]}\n```\nLet me know!'
    )
    assert parse_evaluation(text) == EvaluationAnswer(
        score=6, evaluation="partial", suggestions=("be specific", "add an example")
    )


def test_evaluation_suggestions_wrap_and_closing_remark() -> None:
    """Wrapped suggestion lines join their item; a closing remark after a blank is dropped."""
    text = (
        "Score: 5\nEvaluation: misses a step\nSuggestions:\n1. State the\n   expected format.\n"
        "2) Give the missing context.\n\nOverall, a fair attempt."
    )
    assert parse_evaluation(text).suggestions == (
        "State the expected format.",
        "Give the missing context.",
    )


def test_evaluation_score_only_in_prose() -> None:
    """With no Score line, an ``N out of 10`` in prose is the score."""
    assert parse_evaluation("I would rate this answer 7 out of 10.").score == 7


@pytest.mark.parametrize("text", ["Score: 7", "Score: 7\n\nEvaluation:\n\nSuggestions:\n1. x",
                                  '{"score": 7, "evaluation": "  ", "suggestions": []}'])
def test_an_empty_evaluation_is_unreadable(text: str) -> None:
    """A grade without any evaluation text gives the refiner nothing: unreadable (issue 27)."""
    with pytest.raises(UnparseableOutput, match="evaluation"):
        parse_evaluation(text)


def test_evaluation_without_any_score_is_unparseable() -> None:
    """No score anywhere raises UnparseableOutput carrying the task and the raw text."""
    with pytest.raises(UnparseableOutput) as caught:
        parse_evaluation("The answer is fine.")
    assert (caught.value.task, caught.value.raw) == ("evaluate", "The answer is fine.")


# ---------------------------------------------------------------- refine


def test_revision_empty_input_line() -> None:
    """An empty ``input_new:`` line is an empty input."""
    answer = parse_revision("instruction_new: Name two string instruments.\ninput_new:")
    assert answer == RevisionAnswer(instruction="Name two string instruments.", input="")


def test_revision_empty_placeholder_means_empty() -> None:
    """``input_new: <empty>``-style placeholders mean an empty input."""
    for placeholder in ("<empty>", "(empty)", "N/A", "None", '""'):
        assert parse_revision(f"instruction_new: X\ninput_new: {placeholder}").input == ""


def test_revision_multiline_input_keeps_table_and_code() -> None:
    """A multi-line input keeps its table rows, code fence and indentation exactly."""
    table_and_code = "| a | b |\n|---|---|\n| 1 | 2 |\n\n```python\n    def f():\n        pass\n```"
    text = f"instruction_new: Explain the table and the code.\ninput_new:\n{table_and_code}"
    assert parse_revision(text).input == table_and_code


def test_revision_prose_around_and_bold_labels() -> None:
    """Prose before, bold labels, and a sign-off after a blank line are not content."""
    text = (
        "Here is my revision:\n\n**instruction_new:** Summarise the passage in two sentences.\n"
        "**input_new:** The passage text.\n\nI hope this helps!"
    )
    assert parse_revision(text) == RevisionAnswer(
        instruction="Summarise the passage in two sentences.", input="The passage text."
    )


def test_revision_explanation_after_input_is_dropped() -> None:
    """An ``Explanation:`` section after the input is commentary, not input."""
    text = "instruction_new: Do X.\ninput_new: data\n\nExplanation: I made it specific."
    assert parse_revision(text).input == "data"


def test_revision_json_field_ends_at_the_evaluation_labels_as_a_labelled_one_does() -> None:
    """SmolLM2-135M's json_object refine answer (recorded, xllamacpp): the evaluation's
    ``Score:`` / ``Evaluation:`` / ``Suggestions:`` lines inside ``input_new`` are not
    input; before, they were curated into the item's input and output."""
    text = ('{\n  "instruction_new": "Identify which instrument is string or woodwind: '
            'Panduri, Zurna",\n  "input_new": "The instrument Panduri is a stringed '
            'instrument, while the instrument Zurna is a woodwind instrument.\\nScore: 1'
            '\\n\\nEvaluation: 1.0\\n\\nSuggestions:\\n1. 1.0\\n2. 2.0\\n"\n}')
    assert parse_revision(text) == RevisionAnswer(
        instruction="Identify which instrument is string or woodwind: Panduri, Zurna",
        input="The instrument Panduri is a stringed instrument, while the instrument Zurna "
              "is a woodwind instrument.")
    kept = '{"instruction_new": "Do X.", "input_new": "line one\\nline two\\n"}'
    assert parse_revision(kept).input == "line one\nline two"


def test_revision_in_code_fence() -> None:
    """A revision wrapped in a code fence, with prose outside it, reads from the fence."""
    text = "Revision below.\n```\ninstruction_new: Do X.\ninput_new:\n```\nDone."
    assert parse_revision(text) == RevisionAnswer(instruction="Do X.", input="")


def test_revision_meta_words_are_stripped() -> None:
    """A "Revised instruction:" prefix repeated inside the value is removed."""
    text = "instruction_new: Revised instruction: Fix the bug.\ninput_new:"
    assert parse_revision(text).instruction == "Fix the bug."


def test_revision_alias_labels() -> None:
    """``Revised instruction:`` / ``Revised input:`` labels are accepted too."""
    answer = parse_revision('Revised instruction: "List three fruits."\nRevised input: (none)')
    assert answer == RevisionAnswer(instruction="List three fruits.", input="")


def test_revision_input_line_inside_input_is_content() -> None:
    """With the contract's labels, an ``Input:`` line inside the input stays content."""
    text = "instruction_new: Answer the prompt.\ninput_new: Question: 2+2?\nInput: none given"
    assert parse_revision(text).input == "Question: 2+2?\nInput: none given"


def test_revision_json_form() -> None:
    """The JSON form reads, including an empty input."""
    text = json.dumps({"instruction_new": "Do X.", "input_new": ""})
    assert parse_revision(text) == RevisionAnswer(instruction="Do X.", input="")


def test_revision_without_input_line_is_unparseable() -> None:
    """A missing ``input_new`` line is not guessed as empty or unchanged."""
    with pytest.raises(UnparseableOutput, match="input_new"):
        parse_revision("instruction_new: Do X.")


# ---------------------------------------------------------------- review


def test_verdict_contract_format() -> None:
    """``Winner:`` and ``Explanation:`` lines read into the verdict."""
    answer = parse_verdict("Winner: A\nExplanation: A is clearer.")
    assert answer == VerdictAnswer(winner="A", explanation="A is clearer.")


def test_verdict_bold_sample_name() -> None:
    """``**Winner:** Sample B`` reads as B."""
    assert parse_verdict("**Winner:** Sample B\n**Explanation:** more specific").winner == "B"


def test_verdict_tie_spellings() -> None:
    """Tie, tie, and "Both" all read as Tie."""
    for word in ("Tie", "tie", "Both are equal"):
        assert parse_verdict(f"Winner: {word}\nExplanation: same").winner == "Tie"


def test_verdict_one_line() -> None:
    """``Winner: B. Explanation: …`` on one line splits into winner and explanation."""
    answer = parse_verdict("Winner: B. Explanation: B states the format.")
    assert answer == VerdictAnswer(winner="B", explanation="B states the format.")


def test_verdict_explanation_before_winner() -> None:
    """Reasons written before the Winner line, unlabelled, are the explanation."""
    answer = parse_verdict("B gives the needed context.\n\nWinner: B")
    assert answer == VerdictAnswer(winner="B", explanation="B gives the needed context.")


def test_verdict_json_embedded() -> None:
    """JSON embedded in prose reads."""
    answer = parse_verdict('My verdict: {"winner": "Tie", "explanation": "equal"} as asked.')
    assert answer == VerdictAnswer(winner="Tie", explanation="equal")


def test_verdict_explicit_winner_in_prose() -> None:
    """ "the winner is B" in prose counts when no Winner line exists."""
    assert parse_verdict("After comparing, the winner is B: it is specific.").winner == "B"


def test_verdict_invalid_winner_is_unparseable() -> None:
    """A winner outside A/B/Tie raises UnparseableOutput."""
    with pytest.raises(UnparseableOutput, match="winner"):
        parse_verdict("Winner: C\nExplanation: neither")


# ---------------------------------------------------------------- align and answer


def test_aligned_label_and_preface() -> None:
    """``Output:`` then text reads; a "Here is…:" preface without the label is dropped."""
    assert parse_aligned("Output:\nThe Zurna is a woodwind.").output == "The Zurna is a woodwind."
    assert parse_aligned("Here is the rewritten output:\n\nFour.").output == "Four."


def test_aligned_answer_opening_with_here_is_is_content() -> None:
    """An answer that itself opens with "Here is a list…:" keeps that line."""
    text = "Here is a list of woodwinds:\n- zurna\n- oboe"
    assert parse_aligned(text).output == text


def test_revision_passage_paragraphs_are_not_cut() -> None:
    """A multi-paragraph input keeps a paragraph starting "Note that": it may be content."""
    passage = "The zurna is loud.\n\nNote that it is played outdoors."
    text = f"instruction_new: Summarise the passage.\ninput_new: {passage}"
    assert parse_revision(text).input == passage


def test_aligned_output_line_deep_inside_is_content() -> None:
    """An ``Output:`` line far down the answer is content, not the label."""
    text = "Run the program.\nIt prints a table.\nThen it exits.\nOutput: 42\nDone."
    assert parse_aligned(text).output == text


def test_aligned_keeps_code_fences() -> None:
    """A fenced code output keeps its fence: it belongs to the answer."""
    code = "```python\nprint('hi')\n```"
    assert parse_aligned(f"Output:\n{code}").output == code


def test_aligned_json_form() -> None:
    """The JSON form reads, whole or with a short preface."""
    assert parse_aligned('{"output": "x"}').output == "x"
    assert parse_aligned('Result: {"output": "y"}').output == "y"


def test_aligned_truncated_json_is_unparseable() -> None:
    """A structured answer cut off mid-object is not taken as the output text."""
    with pytest.raises(UnparseableOutput, match="unfinished JSON"):
        parse_aligned('{"output": "The zurna is a double-reed')


def test_aligned_empty_is_unparseable() -> None:
    """An empty answer (or only an unfinished think block) raises UnparseableOutput."""
    for text in ("", "   ", "<think>still thinking"):
        with pytest.raises(UnparseableOutput):
            parse_aligned(text)


def test_clean_answer_strips_think_blocks() -> None:
    """``<think>…</think>`` and a stray ``</think>`` are removed from the backbone's answer."""
    assert clean_answer("<think>plan</think>\n\n The answer. ") == "The answer."
    assert clean_answer("plan silently</think>The answer.") == "The answer."


def test_schemas_are_strict_mode_objects() -> None:
    """Every schema requires all its properties and forbids others (OpenAI strict mode)."""
    assert set(SCHEMAS) == {"score", "evaluate", "refine", "review", "align"}
    for schema in SCHEMAS.values():
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert schema["required"] == list(schema["properties"])


# ---------------------------------------------------------------- property: never crash

PARSERS: dict[str, Callable[[str], object]] = {
    "score": parse_score,
    "evaluate": parse_evaluation,
    "refine": parse_revision,
    "review": parse_verdict,
    "align": parse_aligned,
    "answer": clean_answer,
}
ANSWER_TYPES: dict[str, type] = {
    "score": ScoreAnswer,
    "evaluate": EvaluationAnswer,
    "refine": RevisionAnswer,
    "review": VerdictAnswer,
    "align": AlignedAnswer,
    "answer": str,
}
# Fragments of real answers, so that fuzzing reaches the deep paths, not only "no label".
FRAGMENTS = [
    "Score:", "score - ", "/10", "**", "Winner:", "Explanation:", "Usable:", "yes", "no",
    "Correctness:", "Verdict:", "high", "instruction_new:", "input_new:", "Output:",
    "Suggestions:", "1. ", "- ", "\n", "\n\n", "```", "```json\n", "{", "}", '"score": ',
    '{"winner": ', '"B"', "<think>", "</think>", "9", "10", "99999999999", "1e309", "A", "Tie",
    "\u2028", "[[B]]", "Note:", "0", "-3", "4/0",
]  # fmt: skip
messy_text = st.one_of(
    st.text(),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=40).map("".join),
)


@settings(max_examples=300, deadline=None)
@given(task=st.sampled_from(sorted(PARSERS)), text=messy_text)
def test_any_text_parses_or_raises_unparseable(task: str, text: str) -> None:
    """Arbitrary text gives the task's struct or UnparseableOutput, never another error."""
    try:
        answer = PARSERS[task](text)
    except UnparseableOutput as exc:
        assert exc.task == task
        return
    assert isinstance(answer, ANSWER_TYPES[task])
    if isinstance(answer, msgspec.Struct):
        for name in ("score", "correctness", "completeness", "clarity", "compliance"):
            value = getattr(answer, name, None)
            assert value is None or 1 <= value <= 10
