"""The item: what flows through every topic.

Two wire forms:

* a **raw record** in ``items.raw`` — whatever a data-collection pipeline wrote:
  Alpaca (``instruction/input/output``) or Dolly (``instruction/context/response/
  category``) JSON. :func:`iterrefine.item.records.item_from_raw` validates it into an
  :class:`Item`.
* an **item envelope** everywhere else — the whole :class:`Item` as JSON, so any
  stage can be restarted, scaled or replayed from its input topic alone.

The original fields are kept untouched in :attr:`Item.original`; the pipeline
appends state (scores, evaluation, rounds, status, provenance, timings).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from iterrefine.errors import ValidationError

# Re-exported: part of the item model.
from iterrefine.item._selection_state import Difficulty as Difficulty
from iterrefine.item._selection_state import Selection as Selection

SCHEMA = "iterrefine.item/1"
DEFAULT_MAX_RAW_BYTES = 64 * 1024
#: An envelope grows with the rounds it records; it is bounded separately.
DEFAULT_MAX_ENVELOPE_BYTES = 1024 * 1024

#: DLQ reasons that mean "this input record is unusable" (as opposed to a failure while
#: processing a good one): validation at ingest or in a stage's decoder, and the
#: duplicate-id policy. README "Input" explains each.
INPUT_REASONS = frozenset({
    "not_json", "not_object", "unknown_shape", "ambiguous_shape", "wrong_type",
    "missing_field", "empty_field", "invalid_id", "duplicate_key", "invalid_utf8",
    "too_deep", "too_large", "undecodable", "invalid_envelope",
    "duplicate_id", "duplicate_record",
})

Status = Literal[
    "pending",  # still moving through the pipeline
    "high",  # kept as it is (IQD)
    "refined",  # aligned revision (FIR + OA); ``Item.converged`` says whether it ever won
    "unrefined",  # round limit reached, original kept (keep_original; or no readable revision)
    "dropped",  # round limit reached, dropped (policy drop)
    "rejected",  # judged unusable at scoring
]
Winner = Literal["A", "B", "Tie", "none"]


class Original(msgspec.Struct, frozen=True, kw_only=True):
    """The record as ingested, normalised to Alpaca field names; never modified."""

    instruction: str
    input: str
    output: str
    category: str | None = None
    format: Literal["alpaca", "dolly", "messages", "sharegpt"] = "alpaca"
    #: A chat record's system turn: carried through untouched, never refined
    #: (:mod:`iterrefine.item._chat`).
    system: str | None = None


class Scores(msgspec.Struct, frozen=True, kw_only=True):
    """Per-dimension judge scores on a 1–10 scale."""

    correctness: float
    completeness: float
    clarity: float
    compliance: float
    reasoning: float

    @property
    def mean(self) -> float:
        return (
            self.correctness + self.completeness + self.clarity + self.compliance + self.reasoning
        ) / 5.0


class Judgement(msgspec.Struct, frozen=True, kw_only=True):
    """IQD: the judge's verdict on the original item."""

    usable: bool
    reason: str
    scores: Scores | None
    verdict: Literal["high", "low"]
    justification: str
    #: The paper's task filter: does the item involve reasoning steps or inference?
    #: ``None`` when the judge did not say.
    involves_reasoning: bool | None = None


class Evaluation(msgspec.Struct, frozen=True, kw_only=True):
    """FIR *evaluate*: the strong model grades the backbone's answer to the original."""

    backbone_answer: str
    score: int
    text: str
    suggestions: tuple[str, ...] = ()


class Round(msgspec.Struct, frozen=True, kw_only=True):
    """One *refine → review* round: the revision, the backbone's answer to it, the verdict."""

    number: int
    instruction: str
    input: str
    feedback: str | None  # the reviewer's explanation of the previous round's loss
    #: The feedback set exactly as this round's refine request sent it: every earlier
    #: reviewer's explanation of a lost round, oldest first, as bounded by
    #: ``feedback_max_entries`` / ``feedback_max_chars`` (empty in round 1, and when the
    #: refine request was never sent because an earlier answer could not be read).
    feedback_set: tuple[str, ...] = ()
    backbone_answer: str = ""
    winner: Winner = "none"
    explanation: str = ""
    #: The refine answer could not be read: this round carries no revision of its own.
    revision_failed: bool = False


class Provenance(msgspec.Struct, frozen=True, kw_only=True):
    """Which prompts, models and sampling touched the item; ``simulated`` marks simulator
    output."""

    prompt_version: str = ""
    models: dict[str, str] = {}
    simulated: bool = False
    #: The sampling temperature each role's requests carried.
    temperatures: dict[str, float] = {}
    #: The named preset the run's settings came from (``paper``), if any.
    preset: str | None = None


class Source(msgspec.Struct, frozen=True, kw_only=True):
    """Where the raw record came from (for lineage and replay)."""

    topic: str = ""
    partition: int = -1
    offset: int = -1
    timestamp_ms: int = 0


class Item(msgspec.Struct, frozen=True, kw_only=True):
    """The full state of one item; every message carries all of it."""

    schema: str = SCHEMA
    id: str
    #: Grows with every replay; the exporter keeps the newest revision per id and
    #: drops at-least-once duplicates of the same (id, revision).
    revision: int = 0
    source: Source = Source()
    original: Original
    # The current instruction/input/output (start equal to the original).
    instruction: str
    input: str
    output: str
    judgement: Judgement | None = None
    #: The judge's scores of the refined item (optional re-score after alignment).
    final_judgement: Judgement | None = None
    quality: Literal["high", "low"] | None = None
    #: Instruction difficulty (``routing_policy = "cluster_quota"``).
    difficulty: Difficulty | None = None
    #: Diversity cluster and selection decision (``routing_policy = "cluster_quota"``).
    selection: Selection | None = None
    evaluation: Evaluation | None = None
    #: The backbone's answer to the original instruction: side A of every review.
    original_answer: str | None = None
    round: int = 0
    rounds: tuple[Round, ...] = ()
    #: The reviewer's explanation of the last loss, handed to the next refine.
    feedback: str | None = None
    #: ``True`` once a revision won or tied its review; ``False`` when the round limit was
    #: reached and the last revision was kept anyway (policy ``keep_last_revision``);
    #: ``None`` while refinement has not ended, and for items never refined.
    converged: bool | None = None
    status: Status = "pending"
    status_reason: str = ""
    output_aligned: bool = False
    #: The alignment mode asked for (``anchored`` or ``complete``), once align has run.
    alignment_mode: Literal["anchored", "complete"] | None = None
    provenance: Provenance = Provenance()
    #: Seconds spent in each stage, summed over rounds.
    timings: dict[str, float] = {}

    def with_changes(self, **changes: Any) -> Item:
        """A copy with ``changes`` applied (items are immutable)."""
        return msgspec.structs.replace(self, **changes)

    def add_timing(self, stage: str, seconds: float) -> Item:
        timings = dict(self.timings)
        timings[stage] = round(timings.get(stage, 0.0) + seconds, 6)
        return self.with_changes(timings=timings)


# Built once per process and reused (msgspec's own guidance for hot paths).
_encoder = msgspec.json.Encoder()
_item_decoder = msgspec.json.Decoder(Item)


def encode_item(item: Item) -> bytes:
    try:
        return _encoder.encode(item)
    except UnicodeEncodeError:
        # A lone surrogate (Python's json, in the openai client, lets "\ud800" through
        # from a model's answer) has no UTF-8 form: it becomes U+FFFD, not a stuck item.
        return _encoder.encode(_without_surrogates(msgspec.to_builtins(item)))


def encode_original(original: Original) -> bytes:
    """The validated record's canonical bytes (what "the same content" compares)."""
    return _encoder.encode(original)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_surrogates(v) for v in value]
    return value


def decode_item(data: bytes, *, max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES) -> Item:
    """Decode an item envelope, or raise :class:`ValidationError` saying why not."""
    if len(data) > max_bytes:
        raise ValidationError(
            f"item envelope is {len(data)} bytes, over the {max_bytes}-byte limit",
            reason="too_large",
        )
    try:
        return _item_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValidationError(f"not an item envelope: {exc}", reason="invalid_envelope") from exc
    except UnicodeDecodeError as exc:  # msgspec reports bad UTF-8 as this on some inputs
        raise ValidationError(f"invalid UTF-8: {exc}", reason="invalid_utf8") from exc
    except Exception as exc:  # RecursionError, MemoryError-ish: a poison record, not a crash
        raise undecodable(exc) from exc


def undecodable(exc: BaseException) -> ValidationError:
    return ValidationError(
        f"the decoder raised {type(exc).__name__}: {str(exc)[:200]}", reason="undecodable"
    )


def record_of(item: Item) -> dict[str, Any]:
    """The exported row: curated fields first, then the full state for lineage."""
    row: dict[str, Any] = {
        "id": item.id,
        "instruction": item.instruction,
        "input": item.input,
        "output": item.output,
        "status": item.status,
    }
    row["item"] = msgspec.to_builtins(item)
    return row
