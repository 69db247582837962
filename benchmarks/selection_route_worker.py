"""One real route worker process per policy, draining the same scored items (RSS, speed)."""

from __future__ import annotations

import asyncio
from typing import Any

import harness
import msgspec
import simproc

from iterrefine.config import PipelineConfig, SelectionConfig
from iterrefine.item.model import encode_item


def route_workers(routed: list[Any], k_ratio: float) -> dict[str, Any]:
    """Drain the scored items with one real route worker per policy; its RSS and speed.

    The items carry online cluster ids (as the score stage writes them) and are put in
    ``items.scored``; the worker is ``pipeline_worker.py --stages route``: an online
    worker (mode auto → online).
    """
    values = [encode_item(item) for item in routed]
    out: dict[str, Any] = {}
    harness.quiet_logging()
    with harness.bench_session(quick=False) as bench, simproc.SimProcess(
        log_path=bench.log("selection-sim"), latency_ms=0, capacity=0, low_share=0.5,
        reject_share=0.0, lose_prob=0.5,
    ) as sim:
        for policy in ("cluster_quota", "threshold"):
            config = harness.bench_config(
                bench.bootstrap, bench.prefix(f"selection-{policy}"),
                pipeline=PipelineConfig(routing_policy=policy))
            config = msgspec.structs.replace(
                config, selection=SelectionConfig(k_ratio=k_ratio))
            asyncio.run(harness.produce(config, "items.scored", values))
            worker = simproc.run_pipeline_worker(bench, sim, config, name=f"route-{policy}",
                                                 drain=len(values), stages="route",
                                                 timeout_s=900)
            simproc.check_pipeline_result(worker.result, f"route worker ({policy})")
            out[policy] = {
                "peak_rss_mb": worker.peak_rss_mb,
                "items_per_s": round(len(values) / worker.result["wall_s"], 1),
                "cpu_us_per_item": round(worker.result["cpu_s"] / len(values) * 1e6, 1),
            }
    return out
