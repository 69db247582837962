"""LLM tasks, one registry entry each: template, data keys, answer, parser, schema.

Everything that knows about a task derives from its :class:`TaskSpec` here: the
message builder (:mod:`iterrefine.tasks.prompts`: template, data keys, round header)
and :func:`iterrefine.tasks.ask.ask` (parser, JSON schema). A new task is one
``register_task(TaskSpec(...))`` call, in this module for a built-in task or in
the user's own module for theirs; the stage that asks it calls ``ask(client,
name, data)``. The simulator is a test instrument above this layer: it keeps its own
answers by task name (:func:`iterrefine.sim.register_simulated_answer`), and nothing
here imports it.

``PROMPT_VERSION`` is derived from a digest of the built-in templates and data
contracts (see :func:`prompt_digest`), so a template edit always changes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from iterrefine.llm.chat import ChatOptions
from iterrefine.tasks.limits import fit_aligned, fit_revision
from iterrefine.tasks.parsing import (
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

__all__ = ["TASKS", "TaskSpec", "builtin_template", "prompt_digest", "register_task"]

#: Extra checks of a request's data beyond its keys (raise ValueError saying why).
DataCheck = Callable[[Mapping[str, Any], "int | None"], None]
#: The ``max_tokens`` a request's data needs (see :mod:`iterrefine.tasks.limits`).
TokenFit = Callable[[Mapping[str, Any], "str | None"], int]

SYSTEM_MARKER = "<!-- system -->\n"
USER_MARKER = "<!-- user -->\n"


@dataclass(frozen=True)
class TaskSpec:
    """One LLM task, declared once."""

    name: str
    #: ``<!-- system -->`` instructions, then ``<!-- user -->`` lead-in (see prompts/*.md).
    template: str
    #: Keys the request's data block must have, and may have.
    required: frozenset[str]
    #: Reads the model's answer (with the request's context: nonce, item text, so that
    #: scaffolding and item text stay out of the fields); raises
    #: :class:`~iterrefine.errors.UnparseableOutput`.
    parse: Callable[[str, AnswerContext | None], Any]
    #: What ``parse`` returns (a msgspec Struct, or ``str``).
    answer: type
    #: JSON schema for structured output; None for free-text tasks.
    schema: dict[str, Any] | None = None
    optional: frozenset[str] = frozenset()
    #: The request carries a trusted ``Round: N`` header (and needs ``round``).
    rounds: bool = False
    check: DataCheck | None = None
    #: Alternative instructions (name → template): same keys, same answer format.
    variants: Mapping[str, str] = field(default_factory=dict)
    #: Generation settings of the task's requests: stop sequences, and whether the role's
    #: frequency penalty applies (not on tasks that copy item text).
    options: ChatOptions = field(default_factory=ChatOptions)
    #: A limit that fits the request's data (the ``max_tokens`` the task should need),
    #: given ``(data, variant)``; the configured limit stays the ceiling. None: no fit.
    fit_tokens: TokenFit | None = None
    #: System and user parts of ``template`` (filled in from it).
    parts: tuple[str, str] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", _split(self.name, self.template))
        for variant, text in self.variants.items():
            _split(f"{self.name}.{variant}", text)  # a broken variant fails here, not later

    def variant_parts(self, variant: str) -> tuple[str, str]:
        """System and user parts of one of the task's alternative instructions."""
        return _split(f"{self.name}.{variant}", self.variants[variant])



def _split(name: str, template: str) -> tuple[str, str]:
    _, found_system, rest = template.partition(SYSTEM_MARKER)
    system, found_user, user = rest.partition(USER_MARKER)
    if not (found_system and found_user):
        raise ValueError(f"the template of task {name!r} lacks a {SYSTEM_MARKER!r} "
                         f"or {USER_MARKER!r} line")
    return system.strip(), user.strip()


#: Every task by name: the built-in six, then any registered by user modules.
TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` to the registry (a name is registered once); returns it."""
    if spec.name in TASKS and TASKS[spec.name] != spec:
        raise ValueError(f"an LLM task named {spec.name!r} is already registered")
    TASKS[spec.name] = spec
    return spec


def builtin_template(task: str) -> str:
    """The text of ``iterrefine/tasks/prompts/<task>.md`` (package data)."""
    # Through the package, not iterrefine.tasks.prompts: that module derives its tables
    # from this registry, so importing it here would find this module half-initialised.
    return files("iterrefine.tasks").joinpath("prompts", f"{task}.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------- built-in data checks

_REVIEW_SIDE_KEYS = frozenset({"instruction", "input", "answer"})


def _check_review(data: Mapping[str, Any], round: int | None) -> None:
    for side in ("A", "B"):
        value = data[side]
        if not isinstance(value, Mapping) or set(value) != _REVIEW_SIDE_KEYS:
            raise ValueError(f"review side {side} must have exactly the keys "
                             f"{sorted(_REVIEW_SIDE_KEYS)}")


def _check_refine(data: Mapping[str, Any], round: int | None) -> None:
    if "feedback_set" in data:
        if round == 1:
            raise ValueError("feedback_set only exists from round 2 on")
        notes = data["feedback_set"]
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise ValueError("feedback_set must be a list of strings, oldest first")


# ---------------------------------------------------------------- the built-in six

_ITEM = frozenset({"instruction", "input"})
#: Stop sequences: a model that starts writing the prompt's data-block markers or tag line
#: is echoing its prompt (the whole item, hundreds of tokens), never answering; the server
#: stops there and the parser reads what came before.
_ECHO_STOPS = ("<<<DATA ", "<<<END DATA ", "[iterrefine task=")
_JUDGES = ChatOptions(stop=_ECHO_STOPS)
#: Refine and align copy item text (a context, the facts of an output): a penalty on
#: repeated tokens would push the model off the text it must keep.
_COPIES_TEXT = ChatOptions(stop=_ECHO_STOPS, penalize_repeats=False)
#: The backbone's request has no data block (no markers to echo), only the tag line.
_ANSWERS = ChatOptions(stop=("[iterrefine task=",))

for _spec in (
    TaskSpec(name="score", template=builtin_template("score"),
             required=_ITEM | {"output"}, parse=parse_score, answer=ScoreAnswer,
             schema=SCHEMAS["score"], options=_JUDGES),
    TaskSpec(name="answer", template=builtin_template("answer"),
             required=_ITEM, parse=clean_answer, answer=str, options=_ANSWERS),
    TaskSpec(name="evaluate", template=builtin_template("evaluate"),
             required=_ITEM | {"reference_output", "candidate_answer"},
             parse=parse_evaluation, answer=EvaluationAnswer, schema=SCHEMAS["evaluate"],
             options=_JUDGES),
    TaskSpec(name="refine", template=builtin_template("refine"),
             required=_ITEM | {"reference_output", "backbone_answer", "evaluation"},
             optional=frozenset({"feedback_set"}), rounds=True, check=_check_refine,
             parse=parse_revision, answer=RevisionAnswer, schema=SCHEMAS["refine"],
             options=_COPIES_TEXT, fit_tokens=fit_revision),
    TaskSpec(name="review", template=builtin_template("review"),
             required=frozenset({"A", "B"}), rounds=True, check=_check_review,
             parse=parse_verdict, answer=VerdictAnswer, schema=SCHEMAS["review"],
             options=_JUDGES),
    TaskSpec(name="align", template=builtin_template("align"),
             required=frozenset({"original_instruction", "original_input", "original_output",
                                 "revised_instruction", "revised_input"}),
             parse=parse_aligned, answer=AlignedAnswer, schema=SCHEMAS["align"],
             variants={"complete": builtin_template("align.complete")},
             options=_COPIES_TEXT, fit_tokens=fit_aligned),
):
    register_task(_spec)

BUILTIN_TASKS: tuple[str, ...] = tuple(TASKS)


def prompt_digest(specs: Mapping[str, TaskSpec] | None = None, *, extra: str = "") -> str:
    """sha256 over what a model sees of the built-in tasks: templates, keys, round headers.

    ``extra`` is the rest of the rendering (the re-ask note, the layout revision), so
    that a change there changes the digest too.
    """
    chosen = specs if specs is not None else {name: TASKS[name] for name in BUILTIN_TASKS}
    digest = hashlib.sha256(extra.encode())
    for name in sorted(chosen):
        spec = chosen[name]
        digest.update(json.dumps([name, spec.template, sorted(spec.required),
                                  sorted(spec.optional), spec.rounds,
                                  sorted(spec.variants.items())]).encode())
    return digest.hexdigest()
