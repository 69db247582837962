"""Inline stages (plain-function handlers) against the real embedded broker.

They run a fetched batch per task instead of a task per message; everything the
runtime promises must hold the same way: outputs for every input, commits at the
end offsets, dead letters with reasons, retries, an item keeping its partition.
"""

from __future__ import annotations

import collections
import json

import pytest

from iterrefine.errors import LLMError, LLMTransientError
from iterrefine.item.model import Item
from iterrefine.kafka.clients import read_to_end
from iterrefine.kafka.topics import TopicNames
from iterrefine.runtime import Output, Stage, decode_raw_record
from iterrefine.runtime.dlq import headers_dict

from .helpers import alpaca, committed_vs_end, read_ids, run_until_done, unique_config


@pytest.mark.unit
def test_the_declared_flag_decides_inline_not_the_handler_shape() -> None:
    """A stage runs inline iff it says waits=False, whatever its handler looks like."""
    async def waits(item: Item) -> list[Output]:
        return []

    def never_waits(item: Item) -> list[Output]:
        return []

    assert Stage("s", "items.raw", never_waits, outputs=("items.scored",), waits=False).inline
    assert not Stage("s", "items.raw", waits, outputs=("items.scored",), waits=True).inline
    # A lambda around a coroutine function looks like a plain function; the flag says not.
    assert not Stage("s", "items.raw", lambda item: waits(item), outputs=("items.scored",),
                     waits=True).inline


async def test_inline_stage_delivers_everything_and_commits_the_end(broker: str) -> None:
    """20,000 items, two outputs for some: all delivered, in their input's partition."""
    config = unique_config(max_in_flight=256)
    n = 20_000

    def fan_out(item: Item) -> list[Output]:
        outputs = [Output("items.scored", item)]
        if item.id.endswith("7"):
            outputs.append(Output("items.curated", item, outcome="sampled"))
        return outputs

    stage = Stage("fanout", "items.raw", fan_out, decode=decode_raw_record,
                  outputs=("items.scored", "items.curated"), waits=False)
    runner = await run_until_done(stage, config, broker, [alpaca(i) for i in range(n)],
                                  keys=[f"item-{i}".encode() for i in range(n)], timeout_s=120)
    topics = TopicNames(config.kafka.topic_prefix)

    raw = {r.key: r.partition for r in await read_to_end(config.kafka, broker,
                                                          [topics["items.raw"]])}
    scored = await read_to_end(config.kafka, broker, [topics["items.scored"]])
    assert sorted(r.key.decode() for r in scored) == sorted(f"item-{i}" for i in range(n))
    assert all(r.partition == raw[r.key] for r in scored)  # an item keeps its partition
    sampled = await read_ids(config, broker, "items.curated")
    assert sorted(sampled) == sorted(f"item-{i}" for i in range(n) if str(i).endswith("7"))
    committed, ends = await committed_vs_end(config, broker, runner.group_id, "items.raw")
    assert committed == ends and sum(ends.values()) == n


async def test_inline_stage_dead_letters_and_retries(broker: str) -> None:
    """Malformed input and a failing handler → DLQ with reasons; a transient error is retried
    (off the batch, with backoff); the items around them pass."""
    config = unique_config(retry_base_s=0.01, retry_max_s=0.05)
    calls: collections.Counter[str] = collections.Counter()

    def flaky(item: Item) -> list[Output]:
        calls[item.id] += 1
        if item.id == "item-3" and calls[item.id] < 3:
            raise LLMTransientError("503 from endpoint")
        if item.id == "item-5":
            raise LLMError("401 unauthorized")
        if item.id == "item-7":
            raise RuntimeError("a bug in the handler")
        return [Output("items.scored", item)]

    values = [alpaca(i) for i in range(10)]
    values.insert(4, b"{oops")
    values.insert(8, json.dumps({"instruction": "", "output": "y"}).encode())
    stage = Stage("flaky", "items.raw", flaky, decode=decode_raw_record,
                  outputs=("items.scored",), waits=False)
    runner = await run_until_done(stage, config, broker, values)
    topics = TopicNames(config.kafka.topic_prefix)

    assert sorted(await read_ids(config, broker, "items.scored")) == sorted(
        f"item-{i}" for i in range(10) if i not in (5, 7)
    )
    assert calls["item-3"] == 3 and calls["item-5"] == 1
    dlq = await read_to_end(config.kafka, broker, [topics["items.dlq"]])
    reasons = sorted(headers_dict(r.headers)["reason"] for r in dlq)
    assert reasons == ["empty_field", "handler_error", "llm_error", "not_json"]
    committed, ends = await committed_vs_end(config, broker, runner.group_id, "items.raw")
    assert {p: offset or 0 for p, offset in committed.items()} == ends  # empty: never committed
