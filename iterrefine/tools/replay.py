"""Replay: re-feed a range of a topic into the pipeline under the current config and prompts.

Topics are the system of record, so reprocessing is re-consuming a range (by
offset or timestamp) into a stage's input topic, where the running workers
handle it like any new message: e.g. ``items.raw`` into *score* to re-score
with a better judge, or ``items.curated`` into *align* to re-align. The range
is read by a group-less consumer, so the live consumer groups are not
disturbed, and it ends where the topic ended when the replay started (a replay
of ``items.raw`` into *score* never re-reads its own output).

Every replayed item gets a newer revision, and the exporter keeps the newest
revision per item id, so a replay replaces earlier results instead of adding
rows:

* raw records are re-produced byte for byte into ``items.raw``; their new
  broker timestamp becomes the item's revision
  (:func:`iterrefine.runtime.stage.decode_raw_record`);
* an item envelope fed to a later stage gets ``revision`` = now (ms) and the
  state that stage would produce is reset by the stage's own rule (its graph
  entry's ``reset``, :class:`iterrefine.graph.spec.StageSpec`); an envelope fed to
  *score* restarts from its original fields there.

Records the target stage cannot take (e.g. an item that never converged, into
*align*) and duplicates within the range are skipped and counted by reason.

Timestamps: ``offsets_for_times`` finds the range; on this Tansu build it looks
up the broker's own append time rather than the record timestamp (a few ms
apart) and answers "no such offset" as offset 0 with timestamp -1, so its
answer is only a starting point. Records are then kept by their own timestamp,
``since_ms <= timestamp < until_ms``; a broker without the lookup is scanned
from the beginning with the same filter.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from iterrefine.config import KafkaConfig
from iterrefine.errors import BrokerError, ConfigError, ValidationError
from iterrefine.graph.spec import StageGraph, StageSpec
from iterrefine.item.model import decode_item, encode_item
from iterrefine.item.records import item_from_raw, raw_id
from iterrefine.kafka.clients import make_consumer, make_producer, true_end_offsets
from iterrefine.kafka.topics import DLQ_TOPIC, INGEST_TOPIC, TopicNames, ensure_topics

log = structlog.get_logger("iterrefine.replay")
#: Where a replayed record came from: ``topic/partition/offset``.
REPLAY_SOURCE_HEADER = "iterrefine.replay.source"
_KEPT_OWN_HEADERS = ("iterrefine.ingest.",)
_STALL_S = 30.0


@dataclass(frozen=True)
class ReplayRange:
    """Which records to replay: per partition from an offset and/or a time, up to a time."""

    from_offset: int | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    #: Only these partitions (default: all).
    partitions: tuple[int, ...] | None = None

    def admits(self, timestamp_ms: int) -> bool:
        if self.since_ms is not None and timestamp_ms < self.since_ms:
            return False
        return self.until_ms is None or timestamp_ms < self.until_ms


@dataclass
class ReplayReport:
    source: str
    target: str
    stage: str
    #: Per partition: (first offset, end offset) read.
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)
    read: int = 0
    sent: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    #: Ids of the items sent, in order: what to wait for in the terminal topics.
    ids: dict[str, None] = field(default_factory=dict)


def _reads_raw(spec: StageSpec) -> bool:
    return spec.topic == INGEST_TOPIC


def resolve_target(
    graph: StageGraph, names: TopicNames, topic: str, to_stage: str | None
) -> tuple[str, str]:
    """(logical source topic, target stage) for ``--topic``/``--to``, or a ConfigError."""
    source = names.logical(topic)
    topics = graph.topics()
    if source not in topics:
        raise ConfigError(
            f"unknown topic {topic!r}: use one of {', '.join(topics)} (with or without "
            f"the prefix {names.prefix!r})"
        )
    if to_stage is None:
        readers = [name for name in graph.readers(source) if graph[name].reset is not None]
        if not readers:
            raise ConfigError(
                f"no stage consumes {source}: pass --to STAGE, e.g. --to score to re-score from "
                "the original fields, or --to align to re-align refined items"
            )
        return source, readers[0]
    replayable = [spec.name for spec in graph if spec.reset is not None]
    if to_stage not in graph:
        raise ConfigError(f"unknown stage {to_stage!r}: use one of {', '.join(replayable)}")
    if graph[to_stage].reset is None:
        raise ConfigError(f"stage {to_stage!r} declares no replay rule (StageSpec.reset): use "
                          f"one of {', '.join(replayable)}")
    if source == INGEST_TOPIC and not _reads_raw(graph[to_stage]):
        raw_readers = [spec.name for spec in graph if _reads_raw(spec)]
        raise ConfigError(
            f"{INGEST_TOPIC} holds raw records, which only {', '.join(raw_readers)} reads: use "
            f"--to {raw_readers[0] if raw_readers else 'score'} (or replay a later topic, "
            "e.g. items.scored, into the later stages)"
        )
    return source, to_stage


def _headers(record: ConsumerRecord) -> list[tuple[str, bytes]]:
    """The record's headers minus our stage/dead-letter ones, plus where it came from."""
    kept = [
        (key, value) for key, value in (record.headers or ())
        if not key.startswith("iterrefine.") or key.startswith(_KEPT_OWN_HEADERS)
    ]
    source = f"{record.topic}/{record.partition}/{record.offset}"
    return [*kept, (REPLAY_SOURCE_HEADER, source.encode())]


class _Rewriter:
    """Turns source records into messages for the target stage; drops duplicates."""

    def __init__(self, source: str, spec: StageSpec, max_envelope_bytes: int) -> None:
        assert spec.reset is not None  # resolve_target picks only stages that can be replayed
        self._reset = spec.reset
        # Raw bytes go as they are to a stage that reads raw records.
        self._raw = _reads_raw(spec) and source in (INGEST_TOPIC, DLQ_TOPIC)
        self._max_bytes = max_envelope_bytes
        self._base_revision = int(time.time() * 1000)
        #: id → (source revision, revision given) of what was sent.
        self._sent: dict[str, tuple[int, int]] = {}
        self._seen_raw: set[bytes] = set()

    def rewrite(self, record: ConsumerRecord) -> tuple[bytes | None, bytes, str]:
        """(key, value, item id) to produce; ValidationError if the record is to be skipped."""
        value: bytes = record.value or b""
        if self._raw:
            # Raw bytes go as they are: the new broker timestamp is the new revision.
            fingerprint = hashlib.blake2b((record.key or b"") + b"\0" + value,
                                          digest_size=16).digest()
            if fingerprint in self._seen_raw:
                raise ValidationError("already replayed", reason="duplicate")
            self._seen_raw.add(fingerprint)
            return record.key, value, _raw_item_id(record.key, value)
        try:
            item = decode_item(value, max_bytes=self._max_bytes)
        except ValidationError:
            raise ValidationError("not an item envelope", reason="not_an_envelope") from None
        previous = self._sent.get(item.id)
        if previous is None:
            revision = max(self._base_revision, item.revision + 1)
        elif item.revision > previous[0]:
            revision = previous[1] + 1  # a newer state of an item already sent: it must win
        else:
            raise ValidationError("already replayed", reason="duplicate")
        replayed = self._reset(item, revision)
        self._sent[item.id] = (item.revision, revision)
        return item.id.encode(), encode_item(replayed), item.id


def _raw_item_id(key: bytes | None, value: bytes) -> str:
    """The id score will give a raw record: its key (ingest sets it), else from its bytes."""
    if key:
        return key.decode("utf-8", "replace")
    try:
        return item_from_raw(value, max_bytes=len(value)).id
    except ValidationError:
        return raw_id(value)


async def _offsets_at(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    timestamp_ms: int,
    *,
    begins: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
    fallback: dict[TopicPartition, int],
) -> dict[TopicPartition, int]:
    """First offset at or after ``timestamp_ms`` per partition (``fallback`` if unknown)."""
    try:
        found = await consumer.offsets_for_times({tp: timestamp_ms for tp in partitions})
    except (KafkaError, ValueError) as exc:
        log.warning("offsets_for_times_unsupported", error=type(exc).__name__,
                    action="scanning timestamps")
        return dict(fallback)
    result: dict[TopicPartition, int] = {}
    for tp in partitions:
        hit = found.get(tp)
        if hit is None or hit.timestamp < 0:  # Tansu says "none" as (offset 0, timestamp -1)
            result[tp] = ends[tp]
        else:
            result[tp] = min(max(hit.offset, begins[tp]), ends[tp])
    return result


async def plan_ranges(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], wanted: ReplayRange
) -> dict[TopicPartition, tuple[int, int]]:
    """Per partition, the offsets ``[start, end)`` to read (``consumer`` is assigned here)."""
    ends = await true_end_offsets(consumer, partitions)
    begins: dict[TopicPartition, int] = await consumer.beginning_offsets(partitions)
    starts = dict(begins)
    if wanted.from_offset is not None:
        starts = {tp: min(max(wanted.from_offset, begins[tp]), ends[tp]) for tp in partitions}
    if wanted.since_ms is not None:
        since = await _offsets_at(consumer, partitions, wanted.since_ms, begins=begins,
                                  ends=ends, fallback=begins)
        starts = {tp: max(starts[tp], since[tp]) for tp in partitions}
    stops = dict(ends)
    if wanted.until_ms is not None:
        until = await _offsets_at(consumer, partitions, wanted.until_ms, begins=begins,
                                  ends=ends, fallback=ends)
        stops = {tp: min(ends[tp], until[tp]) for tp in partitions}
    return {tp: (starts[tp], max(starts[tp], stops[tp])) for tp in partitions}


async def replay(
    config: KafkaConfig,
    bootstrap_servers: str,
    topic: str,
    wanted: ReplayRange,
    *,
    graph: StageGraph,
    to_stage: str | None = None,
    max_envelope_bytes: int = 1024 * 1024,
    dry_run: bool = False,
    batch_size: int = 500,
) -> ReplayReport:
    """Re-feed ``wanted`` of ``topic`` to ``to_stage`` (default: the stage that consumes it)."""
    names = TopicNames(config.topic_prefix)
    source, stage = resolve_target(graph, names, topic, to_stage)
    spec = graph[stage]
    report = ReplayReport(source=names[source], target=names[spec.topic], stage=stage)
    await ensure_topics(config, bootstrap_servers, graph.topics())
    consumer = make_consumer(config, bootstrap_servers, group_id=None)
    producer: AIOKafkaProducer | None = None
    await consumer.start()
    try:
        available = sorted(consumer.partitions_for_topic(report.source) or ())
        chosen = available if wanted.partitions is None else sorted(set(wanted.partitions))
        missing = sorted(set(chosen) - set(available))
        if missing:
            raise ConfigError(f"{report.source} has no partition(s) {missing}; it has "
                              f"{len(available)} (0–{len(available) - 1})")
        partitions = [TopicPartition(report.source, p) for p in chosen]
        ranges = await plan_ranges(consumer, partitions, wanted)
        report.ranges = {tp.partition: r for tp, r in ranges.items()}
        log.info("replay_planned", source=report.source, target=report.target, stage=stage,
                 records=sum(end - start for start, end in ranges.values()), dry_run=dry_run)
        if not dry_run:
            producer = make_producer(config, bootstrap_servers)
            await producer.start()
        await _copy(consumer, producer, ranges, wanted, _Rewriter(source, spec,
                    max_envelope_bytes), report, batch_size=batch_size)
    finally:
        await consumer.stop()
        if producer is not None:
            await producer.stop()
    log.info("replay_done", source=report.source, target=report.target, read=report.read,
             sent=report.sent, skipped=dict(report.skipped), dry_run=dry_run)
    return report


async def _copy(
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer | None,
    ranges: dict[TopicPartition, tuple[int, int]],
    wanted: ReplayRange,
    rewriter: _Rewriter,
    report: ReplayReport,
    *,
    batch_size: int,
) -> None:
    """Read each partition's range and produce the rewritten records (acks in batches)."""
    remaining = {tp for tp, (start, end) in ranges.items() if end > start}
    for tp, (start, _end) in ranges.items():
        consumer.seek(tp, start)
    pending: list[asyncio.Future[object]] = []
    last_progress = time.monotonic()
    while remaining:
        batch = await consumer.getmany(*remaining, timeout_ms=200, max_records=batch_size)
        if batch:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > _STALL_S:
            raise BrokerError(
                f"replay stalled: no records for {_STALL_S:.0f} s from "
                f"{sorted(tp.partition for tp in remaining)} of {report.source}, below their "
                f"end offsets; {report.sent} records were replayed so far"
            )
        for tp, records in batch.items():
            end = ranges[tp][1]
            for record in records:
                if record.offset >= end:
                    break
                report.read += 1
                if not wanted.admits(record.timestamp):
                    report.skipped["outside_time_range"] += 1
                    continue
                try:
                    key, value, item_id = rewriter.rewrite(record)
                except ValidationError as skip:
                    report.skipped[skip.reason] += 1
                    continue
                report.ids.setdefault(item_id, None)
                report.sent += 1
                if producer is not None:
                    pending.append(await producer.send(report.target, value, key=key,
                                                       headers=_headers(record)))
            if await consumer.position(tp) >= end:
                remaining.discard(tp)
        if len(pending) >= batch_size:
            await asyncio.gather(*pending)  # backpressure: wait for the broker's acks
            pending = []
    if pending:
        await asyncio.gather(*pending)


def parse_time_ms(text: str) -> int:
    """Milliseconds since the epoch of an ISO-8601 time (UTC if no zone is given)."""
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"cannot read {text!r} as a time: use ISO 8601, e.g. 2026-05-01T12:00:00Z or "
            "2026-05-01T14:00:00+02:00 (no zone means UTC)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def describe_ranges(ranges: dict[int, tuple[int, int]]) -> Sequence[str]:
    """``p3: 10–42`` per partition that has records in range."""
    return [f"p{p}: {start}–{end}" for p, (start, end) in sorted(ranges.items()) if end > start]
