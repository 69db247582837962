"""The item model: raw-record validation, ids, envelopes."""

from __future__ import annotations

import contextlib
import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iterrefine.errors import ValidationError
from iterrefine.item.model import Item, Round, decode_item, encode_item
from iterrefine.item.records import item_from_raw, stable_id

pytestmark = pytest.mark.unit


def raw(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_alpaca_record_becomes_item() -> None:
    """An Alpaca record keeps its fields untouched in `original` and as current text."""
    item = item_from_raw(raw(instruction="Say hi", input="", output="hi"))
    assert item.original.format == "alpaca"
    assert (item.instruction, item.input, item.output) == ("Say hi", "", "hi")
    assert item.status == "pending"


def test_dolly_record_maps_context_and_response() -> None:
    """A Dolly record's context/response/category map to input/output/category."""
    item = item_from_raw(
        raw(instruction="Q?", context="ctx", response="A.", category="closed_qa")
    )
    assert item.original.format == "dolly"
    assert (item.input, item.output, item.original.category) == ("ctx", "A.", "closed_qa")


def test_id_is_given_or_a_stable_content_hash() -> None:
    """A given id is kept; otherwise the id is a hash that ignores whitespace differences."""
    assert item_from_raw(raw(id="abc", instruction="x", output="y")).id == "abc"
    a = item_from_raw(raw(instruction="Say  hi ", output="hi"))
    b = item_from_raw(raw(instruction="Say hi", output=" hi"))
    assert a.id == b.id == stable_id("Say hi", "", "hi")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json at all", "not_json"),
        (b"[1, 2]", "not_object"),
        (raw(prompt="x", completion="y"), "unknown_shape"),
        (raw(instruction=5, output="y"), "wrong_type"),
        (raw(instruction="x"), "missing_field"),
        (raw(instruction="   ", output="y"), "empty_field"),
        (raw(instruction="x", output=""), "empty_field"),
        (b'{"instruction": "\xff\xfe", "output": "y"}', "invalid_utf8"),
        (raw(instruction="x" * 70_000, output="y"), "too_large"),
    ],
)
def test_malformed_records_raise_one_error_type_with_reason(data: bytes, reason: str) -> None:
    """Every malformed record kind raises ValidationError with its own reason code."""
    with pytest.raises(ValidationError) as info:
        item_from_raw(data)
    assert info.value.reason == reason
    assert str(info.value)  # a human-readable message


def test_size_limit_is_configurable() -> None:
    """The per-item size limit is a parameter (default 64 KiB)."""
    data = raw(instruction="x" * 100, output="y")
    with pytest.raises(ValidationError):
        item_from_raw(data, max_bytes=50)
    assert item_from_raw(data, max_bytes=1000).instruction == "x" * 100


def test_envelope_round_trip_keeps_lineage() -> None:
    """An item with rounds survives encode/decode unchanged."""
    item = item_from_raw(raw(instruction="x", output="y")).with_changes(
        rounds=(Round(number=1, instruction="x2", input="", feedback=None, winner="A"),),
        round=1,
    )
    assert decode_item(encode_item(item)) == item


def test_envelope_accepted_on_raw_topic_restarts_from_original() -> None:
    """A replayed envelope in items.raw starts a fresh item from its original fields."""
    item = item_from_raw(raw(instruction="x", output="y")).with_changes(
        instruction="changed", status="high"
    )
    again = item_from_raw(encode_item(item))
    assert again.id == item.id
    assert again.instruction == "x"
    assert again.status == "pending"


texts = st.text(max_size=200)


@settings(max_examples=200)
@given(instruction=texts.filter(str.strip), input=texts, output=texts.filter(str.strip))
def test_property_encode_decode_round_trip(instruction: str, input: str, output: str) -> None:
    """Property: any valid item round-trips through its envelope encoding."""
    item = item_from_raw(raw(instruction=instruction, input=input, output=output))
    assert decode_item(encode_item(item)) == item


@settings(max_examples=500)
@given(data=st.one_of(
    st.binary(max_size=300),
    st.builds(lambda v: msgspec.json.encode(v), st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(
            ["instruction", "input", "output", "context", "response", "category", "id", "x"]
        ), children, max_size=5),
        max_leaves=10,
    )),
))
def test_property_arbitrary_bytes_give_item_or_validation_error(data: bytes) -> None:
    """Property: arbitrary bytes give an Item or ValidationError, never another exception."""
    try:
        result = item_from_raw(data)
    except ValidationError:
        return
    assert isinstance(result, Item)


@settings(max_examples=300)
@given(data=st.binary(max_size=300))
def test_property_arbitrary_bytes_as_envelope(data: bytes) -> None:
    """Property: arbitrary bytes decoded as an envelope raise only ValidationError."""
    with contextlib.suppress(ValidationError):
        decode_item(data)
