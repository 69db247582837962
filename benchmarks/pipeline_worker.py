"""The measured process of the LLM scenarios: iterrefine's stages against a simulator.

Spawned by ``backlog.py``, ``utilization.py``, ``e2e.py`` and ``overhead.py`` (never
run by hand). It does what ``iterrefine run`` does — one process, the graph's stages
built and served by :func:`iterrefine.app.pipeline.serve_pipeline`, ``LLMRoles`` pointed at
the simulator by :func:`iterrefine.app.run.sim_roles`, a :class:`TerminalWatcher` on the
terminal topics — with two differences that make it measurable:

* it waits until every stage has its partitions before it ingests, so the timed window
  (ingest start → last item in a terminal topic) holds no group-join time; the
  startup is reported apart (``startup_s``);
* ``--drain N`` mode ingests nothing and runs until the stages have handled ``N``
  messages already waiting in their input topic (a backlog);
* ``--processes N`` first starts N - 1 extra stage processes in the same consumer
  groups, as ``iterrefine run --workers N`` does (:class:`iterrefine.app._extra_workers.
  ExtraWorkers`); this process joins last, so the groups are settled when it ingests.

Prints one ``RESULT {json}`` line: timings on the system-wide monotonic clock (so the
driver can line them up with the simulator's time series), CPU seconds of the timed
window, messages handled per stage, each item's outcome, LLM request counts, memory.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import harness

from iterrefine.app._extra_workers import ExtraWorkers, add_stats
from iterrefine.app.pipeline import load_graph, serve_pipeline
from iterrefine.app.run import sim_roles
from iterrefine.io.ingest import Ingestor, read_records
from iterrefine.io.watch import TerminalWatcher
from iterrefine.kafka.clients import make_producer
from iterrefine.kafka.topics import TopicNames, ensure_topics
from iterrefine.llm import LLMStats
from iterrefine.observe.metrics import Metrics
from iterrefine.runtime import StageRunner
from iterrefine.sim import SimConfig


async def _wait_ready(runners: list[StageRunner], expected: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(runners) < expected or not all(r.ready.is_set() for r in runners):
        if time.monotonic() > deadline:
            raise TimeoutError("the stages did not get their partitions in time")
        await asyncio.sleep(0.01)


class LoopLag:
    """How late the event loop runs a timer: a busy loop delays every item's next step.

    Sleeps ``interval_s`` over and over and records how much longer each sleep took.
    """

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval_s)
            now = time.monotonic()
            self.samples.append((now, now - before - self.interval_s))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def summary(self, t0: float, t1: float) -> dict[str, Any]:
        lags = sorted(lag for t, lag in self.samples if t0 <= t <= t1)
        if not lags:
            return {}

        def q(p: float) -> float:
            return round(lags[min(len(lags) - 1, int(p * len(lags)))] * 1000, 1)

        stalls = [[round(t - t0, 2), round(lag * 1000)] for t, lag in self.samples
                  if t0 <= t <= t1 and lag >= 0.1]
        return {"p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99),
                "max_ms": round(lags[-1] * 1000, 1), "samples": len(lags),
                "stalled_s": round(sum(lag for t, lag in self.samples if t0 <= t <= t1), 3),
                "stalls_over_100ms_t_ms": stalls}


async def serve(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.monotonic()
    config = harness.decode_config(args.config)
    bootstrap = config.kafka.bootstrap_servers
    assert bootstrap is not None
    config = sim_roles(config, args.sim_base_url,
                       SimConfig(latency_ms=args.sim_latency_ms, capacity=args.sim_capacity))
    stage_names = tuple(args.stages.split(","))
    metrics = Metrics()
    graph = load_graph(config)
    await ensure_topics(config.kafka, bootstrap, graph.topics())
    watcher = TerminalWatcher(config.kafka, bootstrap)
    await watcher.start()
    extras = ExtraWorkers(config, bootstrap, args.processes - 1)
    await extras.start()
    runners: list[StageRunner] = []
    lag = LoopLag()
    stop = asyncio.Event()
    stages: asyncio.Task[dict[str, LLMStats]] = asyncio.create_task(serve_pipeline(
        config, bootstrap, stages=stage_names, graph=graph, metrics=metrics, stop=stop,
        simulated=True, runners_out=runners,
    ))
    try:
        await _wait_ready(runners, len(stage_names), timeout_s=60)
        lag.start()
        t_ready = time.monotonic()
        cpu_start = time.process_time()
        if args.drain:
            ids: list[str] = []
            while sum(r.handled + r.dead_lettered for r in runners) < args.drain:
                if stages.done():
                    break
                await asyncio.sleep(0.005)
            seen = 0
        else:
            ids = await _ingest(config, bootstrap, Path(args.input))
            progress = [time.monotonic()]
            seen = await watcher.wait_for(
                ids,
                on_progress=lambda _new: progress.__setitem__(0, time.monotonic()),
                # A lost item must fail the run, not hang it until the driver's timeout.
                should_stop=lambda: stages.done()
                or time.monotonic() - progress[0] > args.stall_timeout_s,
            )
        t_done = time.monotonic()
        cpu_window = time.process_time() - cpu_start
    finally:
        lag.stop()
        extras_cpu_s = [harness.proc_cpu_s(pid) for pid in extras.pids]
        stop.set()
        own_llm = await stages
        extras_llm = await extras.stop()
        await watcher.stop()
    llm = {role: {"requests": s.requests, "errors": s.errors, "retries": s.retries}
           for role, s in add_stats(own_llm, extras_llm).items()}
    items = []
    dlq_reasons: Counter[str] = Counter()
    for item_id in ids:
        terminal = watcher.selection.by_id.get(item_id)
        if terminal is None:
            continue
        item = terminal.item
        if terminal.outcome == "dlq":
            message = terminal.meta.get("message", "")[:120]
            dlq_reasons[f"{terminal.meta.get('reason')}: {message}"] += 1
        items.append({
            "id": item_id, "outcome": terminal.outcome,
            "status": item.status if item else None,
            "quality": item.quality if item else None,
            "rounds": item.round if item else 0,
            # Ingest → terminal topic (both broker-side CreateTimes), and the part of it
            # spent inside stage handlers (LLM calls included); the rest is Kafka transit
            # and waiting for a slot in a stage's in-flight window.
            "latency_s": (terminal.timestamp_ms - item.source.timestamp_ms) / 1000
            if item else None,
            "handler_s": round(sum(item.timings.values()), 4) if item else None,
            "hops": len(item.timings) + 2 * max(0, item.round - 1) if item else None,
        })
    handled = {r.stage.name: r.handled for r in runners}
    dead = {r.stage.name: r.dead_lettered for r in runners}
    return {
        "t_start": t_start,
        "t_ready": t_ready,
        "t_done": t_done,
        "startup_s": round(t_ready - t_start, 3),
        "wall_s": round(t_done - t_ready, 4),
        "cpu_s": round(cpu_window, 4),
        "mode": "drain" if args.drain else "ingest",
        "processes": args.processes,
        #: Whole-life CPU of the extra processes (this one's timed window is cpu_s).
        "extra_processes_cpu_s": extras_cpu_s,
        "expected": len(ids) if not args.drain else args.drain,
        "arrived": seen,
        "handled": handled,
        "dead_lettered": dead,
        "duplicates": watcher.selection.duplicates,
        "dlq_reasons": dict(dlq_reasons),
        "loop_lag": lag.summary(t_ready, t_done),
        "llm": llm,
        "items": items,
        **harness.self_memory(),
    }


async def _ingest(config: Any, bootstrap: str, path: Path) -> list[str]:
    names = TopicNames(config.kafka.topic_prefix)
    producer = make_producer(config.kafka, bootstrap, linger_ms=config.runtime.linger_ms)
    await producer.start()
    try:
        ingestor = Ingestor(producer, names["items.raw"], names["items.dlq"],
                            max_item_bytes=config.runtime.max_item_bytes)
        for record in read_records(path):
            await ingestor.send(record)
        await ingestor.flush()
        return list(ingestor.report.ids)
    finally:
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="Config as JSON (harness.encode_config)")
    parser.add_argument("--sim-base-url", required=True)
    parser.add_argument("--sim-latency-ms", type=float, required=True)
    parser.add_argument("--sim-capacity", type=int, required=True)
    parser.add_argument("--stages", default="score,route,refine,review,align")
    parser.add_argument("--input", help="records to ingest (JSON lines)")
    parser.add_argument("--drain", type=int, help="run until this many messages were handled")
    parser.add_argument("--processes", type=int, default=1,
                        help="stage processes (this one + N-1 extra, see the docstring)")
    parser.add_argument("--stall-timeout-s", type=float, default=60.0,
                        help="give up when no item arrived for this long")
    args = parser.parse_args()
    if not args.input and not args.drain:
        parser.error("give --input or --drain")
    harness.quiet_logging()
    harness.emit_result(asyncio.run(serve(args)))


if __name__ == "__main__":
    main()
