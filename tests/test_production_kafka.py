"""Production on any Kafka: stage processes in consumer groups stop clean on both brokers.

Each test runs on the embedded Tansu and on noida-db (the ``kafka`` fixture), which
starts a new group generation the moment a member leaves and refuses the old one's
commits (Kafka still accepts them while the rebalance is being prepared). A clean stop
is proven by its consequences: every stage group's committed offset is its input's true
end once a run is over, and workers that were stopped mid-work and restarted write no
terminal record twice (nothing finished was left uncommitted, so nothing was redone).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from iterrefine.config import Config
from iterrefine.consumers import PIPELINE
from iterrefine.io.completeness import pipeline_completeness
from iterrefine.sim import SimConfig, SimServer

from .helpers import committed_vs_end, unique_config, wait_until
from .pipeline_support import newest, sample_records, write_jsonl
from .worker_procs import WorkerProc, stop_all, write_worker_config

pytestmark = pytest.mark.slow

#: noida-db, like Kafka, refuses session timeouts under 6 s (group.min.session.timeout.ms).
GROUP_RUNTIME = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500,
                 "retry_base_s": 0.02, "retry_max_s": 0.5}


async def _cli(*argv: str, timeout_s: float = 180) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iterrefine.cli", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _all_committed(config: Config, bootstrap: str) -> dict[str, tuple[int, int]]:
    """Per stage: (records its group has not committed, records in its input topic)."""
    out = {}
    for stage, logical in PIPELINE.inputs().items():
        committed, ends = await committed_vs_end(
            config, bootstrap, f"{config.kafka.topic_prefix}{stage}", logical)
        behind = sum(end - (committed[p] or 0) for p, end in ends.items())
        out[stage] = (behind, sum(ends.values()))
    return out


async def test_run_with_workers_on_a_cluster_commits_everything_and_reruns(
    kafka: str, tmp_path: Path
) -> None:
    """`run --workers 3 --bootstrap`: exit 0 and every stage group committed its input's
    end; a second run on the same prefix finds no group stuck (exit 0 again)."""
    config = unique_config()
    source = write_jsonl(tmp_path / "in.jsonl", sample_records(30))
    common = ["--bootstrap", kafka, "--topic-prefix", config.kafka.topic_prefix,
              "--llm", "sim", "--sim-latency-ms", "20", "--sim-jitter-ms", "5",
              "--data-dir", str(tmp_path / "state"), "--no-progress", "--log-level", "warning"]
    code, _, err = await _cli("run", str(source), "-o", str(tmp_path / "a.jsonl"),
                              "--workers", "3", *common)
    assert code == 0, err[-3000:]
    items = await pipeline_completeness(config.kafka, kafka, PIPELINE.inputs().values())
    assert (items.ingested, items.finished, items.duplicates) == (30, 30, 0)
    # This process commits what it finished before the children leave: committed after,
    # its partitions stayed uncommitted in every stage on noida-db (its rejoin never ends).
    behind = {stage: b for stage, (b, _) in (await _all_committed(config, kafka)).items()}
    assert behind == dict.fromkeys(behind, 0), behind
    # A second run on the same prefix: on Tansu its groups never re-formed (2 of 3 reruns
    # gave up after 120 s) until `run` took static partition shares there.
    code, _, err = await _cli("run", str(source), "-o", str(tmp_path / "b.jsonl"),
                              "--workers", "3", *common)
    assert code == 0, err[-3000:]


async def test_workers_stopped_together_mid_work_leave_nothing_finished_uncommitted(
    kafka: str, tmp_path: Path
) -> None:
    """Two `worker all` processes SIGTERMed at once while LLM calls are in flight: both
    exit 0; a restarted worker finishes the rest, and no terminal record is written twice
    (what was finished had been committed, so nothing was redone)."""
    config = unique_config(**GROUP_RUNTIME)
    settings = write_worker_config(tmp_path / "worker.toml", config, bootstrap=kafka)
    async with SimServer(SimConfig(latency_ms=40, jitter_ms=10, capacity=32, seed=5),
                         port=0) as sim:
        llm = ["--llm-base-url", sim.base_url, "--strong-model", "sim-strong",
               "--backbone-model", "sim-backbone", "--config", str(settings)]
        workers = [WorkerProc.start(f"w{i}", tmp_path, "all", *llm) for i in range(2)]
        try:
            await wait_until(lambda: all(w.events("partitions_assigned") for w in workers),
                             timeout_s=60, interval_s=0.2)
            source = write_jsonl(tmp_path / "in.jsonl", sample_records(60))
            code, _, err = await _cli("ingest", str(source), "--config", str(settings),
                                      "--log-level", "warning")
            assert code == 0, err
            await wait_until(lambda: sim.stats.total >= 40 and sim.stats.concurrency > 0,
                             timeout_s=60, interval_s=0.02)
            for worker in workers:
                worker.process.send_signal(signal.SIGTERM)
            codes = [await asyncio.to_thread(w.process.wait, 60) for w in workers]
            assert codes == [0, 0], [w.tail() for w in workers]
            # Both commit, then stay runtime.leave_delay_s before leaving: with no delay,
            # noida-db refused the later one's commit (3 of 3 runs) and its rejoin to
            # commit again never completed.
            unsaved = [e for w in workers for e in w.events("stage_stopped_with_unsaved_offsets")]
            assert unsaved == []
            restarted = WorkerProc.start("again", tmp_path, "all", *llm)
            workers.append(restarted)
            await wait_until(lambda: _finished(config, kafka, 60), timeout_s=120, interval_s=0.5)
            assert restarted.terminate() == 0, restarted.tail()
        finally:
            stop_all(workers)
    chosen = await newest(config, kafka)
    assert len(chosen.by_id) == 60
    assert chosen.duplicates == 0
    behind = await _all_committed(config, kafka)
    assert {stage: b for stage, (b, _) in behind.items()} == dict.fromkeys(behind, 0)


async def _finished(config: Config, bootstrap: str, n: int) -> bool:
    items = await pipeline_completeness(config.kafka, bootstrap)
    return items.ingested == n and items.finished == n
