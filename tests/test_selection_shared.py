"""The shared centroid model on the real broker: one trainer, all agree, restarts resume."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from iterrefine.config import SelectionConfig
from iterrefine.selection import SharedCentroids
from iterrefine.sim import SimConfig
from iterrefine.sim._vectors import embedding

from .helpers import unique_config, wait_until

SIM = SimConfig(embedding_clusters=5, embedding_dim=24)
SELECTION = SelectionConfig(k=5, warmup=60, batch_size=30)


def vectors(n: int, start: int = 0) -> list[np.ndarray]:
    return [embedding(f"item {i}", SIM).astype(np.float32) for i in range(start, start + n)]


@pytest.mark.slow
async def test_several_workers_agree_on_cluster_ids_and_a_restart_resumes(broker: str) -> None:
    """Three workers: one trains; all accept the same versions and assign the same ids;
    a worker started afterwards reads the newest model back before assigning."""
    config = unique_config()
    async with contextlib.AsyncExitStack() as stack:
        workers = [
            await stack.enter_async_context(SharedCentroids(
                config.kafka, broker, SELECTION, embedding_model="sim-e", writer=f"w{i}"))
            for i in range(3)
        ]
        await wait_until(lambda: sum(w.is_trainer for w in workers) == 1, timeout_s=30)
        assert all(w.assign(vectors(1)[0]) == (None, 0) for w in workers)  # warm-up
        # Every worker sees every vector; only the elected trainer learns from them.
        for vector in vectors(150):
            for worker in workers:
                await worker.observe(vector)
        await wait_until(lambda: all(w.version >= 2 for w in workers), timeout_s=30)
        await asyncio.sleep(0.5)  # let any later proposal land everywhere
        assert len({w.version for w in workers}) == 1
        probe = vectors(200, start=1000)
        ids = [[w.assign(v) for v in probe] for w in workers]
        assert ids[0] == ids[1] == ids[2]
        assert len({cluster for cluster, _ in ids[0]}) == 5
        newest = workers[0].version

        async with SharedCentroids(config.kafka, broker, SELECTION, embedding_model="sim-e",
                                   writer="restarted") as restarted:
            assert restarted.version == newest
            assert [restarted.assign(v) for v in probe] == ids[0]


@pytest.mark.slow
async def test_when_the_trainer_stops_another_worker_takes_over_from_its_model(
    broker: str,
) -> None:
    """The lease moves on rebalance; the new trainer continues from the accepted version."""
    config = unique_config()
    workers = [SharedCentroids(config.kafka, broker, SELECTION, embedding_model="sim-e",
                               writer=name) for name in ("first", "second")]
    try:
        for worker in workers:
            await worker.start()
        await wait_until(lambda: sum(w.is_trainer for w in workers) == 1, timeout_s=30)
        trainer, other = sorted(workers, key=lambda w: not w.is_trainer)
        for vector in vectors(60):
            await trainer.observe(vector)
        await wait_until(lambda: other.version == 1, timeout_s=30)
        await trainer.aclose()
        await wait_until(lambda: other.is_trainer, timeout_s=30)
        for vector in vectors(30, start=500):
            await other.observe(vector)
        await wait_until(lambda: other.version == 2, timeout_s=30)
        assert other.model is not None and other.model.writer == other.writer
        assert other.model.trained_on == 90
    finally:
        for worker in workers:
            await worker.aclose()
