"""Runtime vs a plain aiokafka loop: the cost of our stage runtime on a pass-through hop.

The same backlog of small Alpaca records (``items.raw``, 8 partitions) is drained into
``items.scored`` by each contender, one worker process each, same broker:

* ``runtime``: :func:`iterrefine.runtime.serve.serve_stages` running one stage whose handler
  returns ``[Output("items.scored", item)]`` (decode = ``decode_raw_record``, as the
  score stage; the runtime encodes the item envelope). The handler never waits, so it
  is a plain function and the runtime runs it inline, a fetched batch per task (as it
  runs the route stage). Runtime config = defaults except the session timeout (see
  ``harness.BENCH_RUNTIME``).
* ``runtime_async``: the same stage with an ``async def`` handler (a task per message,
  as the LLM stages run), for context: that per-message task is what a stage that
  waits pays, next to milliseconds of LLM call.
* ``aiokafka_loop``: ``getmany`` → for each record the same decode (``item_from_raw``)
  and encode (``encode_item``) → ``send`` → await every delivery of the batch → commit
  the batch. Same producer (``make_producer``) and consumer (``make_consumer``) settings.
* ``aiokafka_loop_bytes``: the same loop forwarding the bytes untouched (the floor:
  what Kafka I/O alone costs in Python), for context only.

Timing starts at the first record a contender gets (group joins excluded) and ends when
it has delivered and committed everything and closed its clients. Contenders alternate
(``--repeats`` rounds); the median of each is reported.

Run ``python benchmarks/passthrough.py [--quick] [--items N]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import cpu_profile
import harness
from aiokafka.structs import OffsetAndMetadata

from iterrefine.item.model import Item, Source, encode_item
from iterrefine.item.records import item_from_raw
from iterrefine.kafka.clients import make_consumer, make_producer
from iterrefine.kafka.topics import TopicNames
from iterrefine.runtime import Output, Stage, decode_raw_record
from iterrefine.runtime.serve import serve_stages

CONTENDERS = ("runtime", "aiokafka_loop", "runtime_async", "aiokafka_loop_bytes")


# ---------------------------------------------------------------- workers


async def _runtime(config_json: str, n: int, *, inline: bool) -> dict[str, Any]:
    config = harness.decode_config(config_json)
    assert config.kafka.bootstrap_servers is not None
    started: list[float] = []
    handled = 0
    all_handled = asyncio.Event()

    def passthrough(item: Item) -> list[Output]:
        nonlocal handled
        if not started:
            started.extend((time.perf_counter(), time.process_time()))
        handled += 1
        if handled >= n:
            all_handled.set()
        return [Output("items.scored", item)]

    async def passthrough_async(item: Item) -> list[Output]:
        return passthrough(item)

    stop = asyncio.Event()
    stage = Stage("passthrough", "items.raw", passthrough if inline else passthrough_async,
                  decode=decode_raw_record, outputs=("items.scored",), waits=not inline)
    serving = asyncio.create_task(serve_stages(
        [stage], config=config, bootstrap_servers=config.kafka.bootstrap_servers, stop=stop))
    waiting = asyncio.create_task(all_handled.wait())
    await asyncio.wait([serving, waiting], return_when=asyncio.FIRST_COMPLETED)
    stop.set()  # drains in-flight deliveries, commits, leaves the group, closes the producer
    await serving
    waiting.cancel()
    return _timing(started, n, handled)


async def _loop(config_json: str, n: int, *, decode: bool) -> dict[str, Any]:
    config = harness.decode_config(config_json)
    bootstrap = config.kafka.bootstrap_servers
    assert bootstrap is not None
    rt = config.runtime
    names = TopicNames(config.kafka.topic_prefix)
    out_topic = names["items.scored"]
    max_bytes = rt.max_item_bytes
    producer = make_producer(config.kafka, bootstrap, linger_ms=rt.linger_ms)
    consumer = make_consumer(
        config.kafka, bootstrap, group_id=f"{config.kafka.topic_prefix}loop",
        session_timeout_ms=rt.session_timeout_ms, heartbeat_interval_ms=rt.heartbeat_interval_ms,
        max_poll_interval_ms=rt.max_poll_interval_ms, max_poll_records=rt.fetch_max_records,
    )
    consumer.subscribe([names["items.raw"]])
    await producer.start()
    await consumer.start()
    started: list[float] = []
    done = 0
    try:
        while done < n:
            batch = await consumer.getmany(timeout_ms=rt.fetch_timeout_ms,
                                           max_records=rt.fetch_max_records)
            if not batch:
                continue
            if not started:
                started.extend((time.perf_counter(), time.process_time()))
            futures = []
            for records in batch.values():
                for record in records:
                    value = record.value or b""
                    if decode:
                        source = Source(topic=record.topic, partition=record.partition,
                                        offset=record.offset, timestamp_ms=record.timestamp)
                        value = encode_item(item_from_raw(value, max_bytes=max_bytes,
                                                          source=source,
                                                          revision=record.timestamp))
                    futures.append(await producer.send(out_topic, value, key=record.key))
            await asyncio.gather(*futures)
            await consumer.commit({
                tp: OffsetAndMetadata(records[-1].offset + 1, "") for tp, records in batch.items()
            })
            done += sum(len(records) for records in batch.values())
    finally:
        await consumer.stop()
        await producer.stop()
    return _timing(started, n, done)


def _timing(started: list[float], n: int, handled: int) -> dict[str, Any]:
    seconds = time.perf_counter() - started[0]
    cpu = time.process_time() - started[1]
    return {
        "items": handled,
        "seconds": round(seconds, 4),
        "items_per_s": round(n / seconds, 1),
        "cpu_s": round(cpu, 4),
        "cpu_us_per_item": round(cpu / n * 1e6, 2),
        **harness.self_memory(),
    }


def worker_main(args: argparse.Namespace) -> None:
    if args.contender.startswith("runtime"):
        result = asyncio.run(_runtime(args.config, args.items,
                                      inline=args.contender == "runtime"))
    else:
        result = asyncio.run(_loop(args.config, args.items,
                                   decode=args.contender == "aiokafka_loop"))
    harness.emit_result(result)


# ---------------------------------------------------------------- driver


def run(bench: harness.Bench, *, items: int | None = None, repeats: int | None = None,
        contenders: tuple[str, ...] = CONTENDERS, profile: bool = False) -> dict[str, Any]:
    n = items or (20_000 if bench.quick else 100_000)
    rounds = repeats or (1 if bench.quick else 2)
    values = harness.small_records(n)
    load_before = harness.loadavg()
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    for _ in range(rounds):
        for contender in contenders:
            config = harness.bench_config(bench.bootstrap, bench.prefix(f"pt-{contender}"))
            asyncio.run(harness.produce(config, "items.raw", values))
            worker = harness.run_worker(
                [__file__, "worker", "--contender", contender, "--items", str(n),
                 "--config", harness.encode_config(config)],
                log_path=bench.log(f"passthrough-{contender}"), timeout_s=600,
            )
            runs[contender].append({**worker.result,
                                    "sampled_peak_rss_mb": worker.sampled_peak_rss_mb,
                                    "process_cpu_s": round(worker.cpu_s, 3),
                                    "process_wall_s": round(worker.wall_s, 3)})
    profiled: dict[str, Any] | None = None
    if profile and "runtime" in contenders:
        config = harness.bench_config(bench.bootstrap, bench.prefix("pt-profile"))
        asyncio.run(harness.produce(config, "items.raw", values))
        raw = bench.workdir / "passthrough-runtime-profile.txt"
        harness.run_worker(
            [__file__, "worker", "--contender", "runtime", "--items", str(n),
             "--config", harness.encode_config(config)],
            log_path=bench.log("passthrough-profile"), timeout_s=600,
            wrap=harness.py_spy(raw),
        )
        profiled = {"raw": str(raw), **cpu_profile.breakdown(raw)}
    summary = {
        c: {
            "items_per_s": harness.median([r["items_per_s"] for r in rs]),
            "cpu_us_per_item": harness.median([r["cpu_us_per_item"] for r in rs]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "runs": rs,
        }
        for c, rs in runs.items()
    }
    result: dict[str, Any] = {
        "parameters": {
            "items": n, "item_bytes": len(values[0]), "partitions": 8, "repeats": rounds,
            "runtime": dict(harness.BENCH_RUNTIME),
            "timing": "first record received → all delivered, committed and clients closed",
        },
        "contenders": summary,
        "loadavg_before": load_before,
        "loadavg_after": harness.loadavg(),
    }
    if profiled is not None:
        result["runtime_profile"] = profiled
    if "runtime" in summary and "aiokafka_loop" in summary:
        result["ratio"] = round(
            summary["runtime"]["items_per_s"] / summary["aiokafka_loop"]["items_per_s"], 3)
    if "runtime_async" in summary and "aiokafka_loop" in summary:
        result["ratio_async"] = round(
            summary["runtime_async"]["items_per_s"] / summary["aiokafka_loop"]["items_per_s"], 3)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("worker", help="(internal) one contender in this process")
    worker.add_argument("--contender", choices=CONTENDERS, required=True)
    worker.add_argument("--items", type=int, required=True)
    worker.add_argument("--config", required=True)
    parser.add_argument("--quick", action="store_true", help="20,000 items instead of 100,000")
    parser.add_argument("--items", type=int, help="backlog size")
    parser.add_argument("--repeats", type=int,
                        help="rounds of all contenders (default 2, --quick 1)")
    parser.add_argument("--profile", action="store_true",
                        help="also record the runtime contender with py-spy")
    args = parser.parse_args(argv)
    harness.quiet_logging()
    if args.command == "worker":
        worker_main(args)
        return
    with harness.bench_session(args.quick) as bench:
        result = run(bench, items=args.items, repeats=args.repeats, profile=args.profile)
    json.dump({"machine": harness.machine(), "date": harness.now_iso(), **result},
              sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
