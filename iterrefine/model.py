"""The item: what flows through every topic.

Two wire forms:

* a **raw record** in ``items.raw`` — whatever a data-collection pipeline wrote:
  Alpaca (``instruction/input/output``) or Dolly (``instruction/context/response/
  category``) JSON. :func:`item_from_raw` validates it into an :class:`Item`.
* an **item envelope** everywhere else — the whole :class:`Item` as JSON, so any
  stage can be restarted, scaled or replayed from its input topic alone.

The original fields are kept untouched in :attr:`Item.original`; the pipeline
appends state (scores, evaluation, rounds, status, provenance, timings).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any, Literal

import msgspec

from iterrefine.errors import ValidationError
from iterrefine.formats.chat import chat_fields, is_chat_record
from iterrefine.ids import json_type, normalise_id
from iterrefine.jsonguard import DEFAULT_MAX_JSON_DEPTH, check_before_parsing, duplicate_key

# Re-exported: part of the item model.
from iterrefine.selection_state import Difficulty as Difficulty
from iterrefine.selection_state import Selection as Selection

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
    #: (:mod:`iterrefine.formats.chat`).
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
    feedback: str | None  # what the refiner was told about the previous round's loss
    backbone_answer: str = ""
    winner: Winner = "none"
    explanation: str = ""
    #: The refine answer could not be read: this round carries no revision of its own.
    revision_failed: bool = False


class Provenance(msgspec.Struct, frozen=True, kw_only=True):
    """Which prompts and models touched the item; ``simulated`` marks simulator output."""

    prompt_version: str = ""
    models: dict[str, str] = {}
    simulated: bool = False


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
_any_decoder = msgspec.json.Decoder()


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
        raise _undecodable(exc) from exc


def _undecodable(exc: BaseException) -> ValidationError:
    return ValidationError(
        f"the decoder raised {type(exc).__name__}: {str(exc)[:200]}", reason="undecodable"
    )


def _normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def stable_id(instruction: str, input: str, output: str) -> str:
    """Content hash of the normalised original: the same record always gets the same id."""
    h = hashlib.sha256()
    for part in (instruction, input, output):
        h.update(_normalise(part).encode())
        h.update(b"\x1f")
    return h.hexdigest()[:24]


def raw_id(data: bytes) -> str:
    """Id for a record too broken to read: a hash of its bytes (so DLQ rows have an id)."""
    return "raw-" + hashlib.sha256(data).hexdigest()[:20]


def _field(record: dict[str, Any], name: str, *, required: bool) -> str:
    value = record.get(name)
    if value is None:
        if required:
            raise ValidationError(f"missing field {name!r}", reason="missing_field")
        return ""
    if not isinstance(value, str):
        raise ValidationError(
            f"field {name!r} must be a string, got {json_type(value)}", reason="wrong_type"
        )
    if required and not value.strip():
        raise ValidationError(f"field {name!r} is empty", reason="empty_field")
    return value


def original_from_record(record: Any) -> tuple[Original, str | None]:
    """Validate a decoded raw record (Alpaca or Dolly shape); return it and its given id."""
    if not isinstance(record, dict):
        raise ValidationError(
            f"a record must be a JSON object, got {json_type(record)}", reason="not_object"
        )
    given_id = normalise_id(record["id"]) if "id" in record else None
    alpaca, dolly = ("input" in record or "output" in record), (
        "response" in record or "context" in record)
    if alpaca and dolly:
        raise ValidationError(
            "record mixes Alpaca (input/output) and Dolly (context/response) fields; "
            "keep one shape so no field is silently ignored",
            reason="ambiguous_shape",
        )
    if dolly:
        original = Original(
            instruction=_field(record, "instruction", required=True),
            input=_field(record, "context", required=False),
            output=_field(record, "response", required=True),
            category=_field(record, "category", required=False) or None,
            format="dolly",
        )
    elif "output" in record or "instruction" in record:
        original = Original(
            instruction=_field(record, "instruction", required=True),
            input=_field(record, "input", required=False),
            output=_field(record, "output", required=True),
            category=_field(record, "category", required=False) or None,
            format="alpaca",
        )
    elif is_chat_record(record):
        fields, dialect = chat_fields(record)
        original = Original(
            instruction=fields["instruction"], input=fields["input"], output=fields["output"],
            system=fields["system"] or None, format=dialect,
        )
    else:
        keys = ", ".join(sorted(map(str, record))[:8]) or "none"
        raise ValidationError(
            "unknown record shape: expected Alpaca (instruction/input/output), Dolly "
            "(instruction/context/response/category), OpenAI messages or ShareGPT "
            f"conversations; keys were: {keys}",
            reason="unknown_shape",
        )
    return original, given_id


def item_from_raw(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_RAW_BYTES,
    source: Source | None = None,
    revision: int = 0,
    max_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> Item:
    """Validate raw record bytes into a fresh :class:`Item`.

    Raises :class:`ValidationError` (never anything else) for: over the size limit,
    invalid UTF-8, nested too deep, not JSON, duplicate keys, not an object, unknown
    or ambiguous shape, an invalid id, wrong types, missing or empty
    instruction/output. An item envelope is accepted too (replay into scoring): its
    original fields start a fresh item.
    """
    try:
        return _item_from_raw(data, max_bytes=max_bytes, source=source, revision=revision,
                              max_depth=max_depth)
    except ValidationError:
        raise
    except Exception as exc:  # whatever a decoder raises on hostile bytes is that record's error
        raise _undecodable(exc) from exc


def _item_from_raw(
    data: bytes, *, max_bytes: int, source: Source | None, revision: int, max_depth: int
) -> Item:
    if len(data) > max_bytes:
        raise ValidationError(
            f"record is {len(data)} bytes, over the {max_bytes}-byte limit "
            "(raise limits.max_item_bytes to accept it)",
            reason="too_large",
        )
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(
            f"record is not valid UTF-8 at byte {exc.start}", reason="invalid_utf8"
        ) from exc
    check_before_parsing(data, max_depth=max_depth)  # msgspec recurses: bound it first
    try:
        record = _any_decoder.decode(data)
    except msgspec.MsgspecError as exc:  # DecodeError, and ValidationError for huge numbers
        raise ValidationError(f"record is not JSON: {exc}", reason="not_json") from exc
    duplicate = duplicate_key(data, record)
    if duplicate is not None:
        raise ValidationError(
            f"key {duplicate!r} appears more than once in an object; JSON parsers "
            "disagree on which one counts, so the record is refused",
            reason="duplicate_key",
        )
    given_id: str | None
    if isinstance(record, dict) and record.get("schema") == SCHEMA:
        envelope = decode_item(data)
        original, given_id = envelope.original, normalise_id(envelope.id)
    else:
        original, given_id = original_from_record(record)
    return new_item(original, item_id=given_id, source=source, revision=revision)


def new_item(
    original: Original,
    *,
    item_id: str | None = None,
    source: Source | None = None,
    revision: int = 0,
) -> Item:
    return Item(
        id=item_id or stable_id(original.instruction, original.input, original.output),
        revision=revision,
        source=source or Source(),
        original=original,
        instruction=original.instruction,
        input=original.input,
        output=original.output,
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
