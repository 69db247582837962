"""User code that breaks the stage contract: dead letters with reasons, commits move on.

Against the real embedded broker: an output to an undeclared topic, an arbitrary
exception, a handler that is not what its stage declares. Every message ends in
the DLQ (or its output), and the group's commits reach the input's end offsets:
nothing is abandoned, so the partitions keep moving.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import pytest

from iterrefine.item.model import Item
from iterrefine.kafka.clients import read_to_end
from iterrefine.kafka.topics import TopicNames
from iterrefine.runtime import Output, Stage, decode_raw_record
from iterrefine.runtime.dlq import headers_dict

from .helpers import alpaca, committed_vs_end, read_ids, run_until_done, unique_config

N = 24


def _undeclared(item: Item) -> list[Output]:
    return [Output("items.curated", item)]  # the stage declares items.scored only


def _raises(item: Item) -> list[Output]:
    raise KeyError("a bug in user code")


async def _async_raises(item: Item) -> list[Output]:
    raise ZeroDivisionError("a bug in user code")


async def _async_undeclared(item: Item) -> list[Output]:
    return [Output("items.elsewhere", item)]


async def _passes(item: Item) -> list[Output]:
    return [Output("items.scored", item)]


def _not_a_list(item: Item) -> Any:
    return Output("items.scored", item)


CASES: dict[str, tuple[Callable[[Item], Any], bool, str]] = {
    # name: (handler, waits, DLQ reason)
    "inline_undeclared_topic": (_undeclared, False, "undeclared_output_topic"),
    "async_undeclared_topic": (_async_undeclared, True, "undeclared_output_topic"),
    "inline_raises": (_raises, False, "handler_error"),
    "async_raises": (_async_raises, True, "handler_error"),
    "inline_lambda_around_async": (lambda item: _passes(item), False,
                                   "handler_returned_coroutine"),
    "inline_not_a_list": (_not_a_list, False, "bad_handler_result"),
}


@pytest.mark.parametrize("case", CASES)
async def test_contract_breaches_are_dead_lettered_and_committed(broker: str, case: str) -> None:
    """Every message goes to the DLQ with the reason; the group commits the end offsets."""
    handler, waits, reason = CASES[case]
    config = unique_config()
    stage = Stage(case, "items.raw", handler, decode=decode_raw_record,
                  outputs=("items.scored",), waits=waits)
    runner = await run_until_done(stage, config, broker, [alpaca(i) for i in range(N)])

    topics = TopicNames(config.kafka.topic_prefix)
    dlq = await read_to_end(config.kafka, broker, [topics["items.dlq"]])
    meta = [headers_dict(r.headers) for r in dlq]
    assert collections.Counter(m["reason"] for m in meta) == {reason: N}
    assert all(m["stage"] == case and m["message"] for m in meta)
    assert await read_ids(config, broker, "items.scored") == []
    committed, ends = await committed_vs_end(config, broker, runner.group_id, "items.raw")
    assert {p: offset or 0 for p, offset in committed.items()} == ends
    assert sum(ends.values()) == N


async def test_a_lambda_around_an_async_handler_declared_waiting_just_works(broker: str) -> None:
    """Declared waits=True, a lambda returning a coroutine is awaited like any handler."""
    config = unique_config()
    stage = Stage("lambda_ok", "items.raw", lambda item: _passes(item),
                  decode=decode_raw_record, outputs=("items.scored",), waits=True)
    runner = await run_until_done(stage, config, broker, [alpaca(i) for i in range(N)])
    assert sorted(await read_ids(config, broker, "items.scored")) == sorted(
        f"item-{i}" for i in range(N))
    committed, ends = await committed_vs_end(config, broker, runner.group_id, "items.raw")
    assert {p: offset or 0 for p, offset in committed.items()} == ends  # empty: never committed
