"""Gathering the selection signals of a scored item: difficulty and diversity cluster.

Runs in the score stage, right after the judge (and the task filter), for items that
stay in the pipeline: the ``difficulty`` role scores the instruction from completion
logprobs while the ``embedding`` role embeds it. Then, by mode:

* online: the vector is assigned to the shared centroid model's nearest cluster and
  handed to the trainer, then dropped;
* exact (``iterrefine run``): the vector, judge level and difficulty go to the run's
  one decider (:class:`~iterrefine.selection.barrier.SignalSink`); the cluster is
  known only after the barrier, at route.

The item leaves with its :class:`~iterrefine.item.model.Difficulty` and
:class:`~iterrefine.item.model.Selection` (cluster id and model version, how the vector
was pooled; never the vector).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

from iterrefine.config import Config
from iterrefine.item.model import Item, Selection
from iterrefine.observe.metrics import Metrics
from iterrefine.selection.alignment import check_alignment
from iterrefine.selection.barrier import SignalSink, is_exact
from iterrefine.selection.centroids import UNPLACED, Placement
from iterrefine.selection.difficulty import DifficultyScorer, RawPoster
from iterrefine.selection.embeddings import Embedder, Vector
from iterrefine.selection.policy import rank_key
from iterrefine.selection.shared import SharedCentroids


class Centroids(Protocol):
    """What the selector needs of the shared model (``SharedCentroids`` implements it)."""

    def place(self, vector: Vector) -> Placement: ...

    async def observe(self, vector: Vector, key: tuple[int, float] | None = None) -> None: ...


class Selector:
    def __init__(
        self,
        difficulty: DifficultyScorer,
        embedder: Embedder,
        centroids: Centroids | None,
        metrics: Metrics | None = None,
        *,
        sink: SignalSink | None = None,
    ) -> None:
        self.difficulty = difficulty
        self.embedder = embedder
        self.centroids = centroids
        self.sink = sink
        self._histogram = (
            None if metrics is None else metrics.selection_difficulty.labels(difficulty.metric)
        )

    async def annotate(self, item: Item) -> Item:
        difficulty, embedding = await asyncio.gather(
            self.difficulty.score(item.instruction, item.input, item.output),
            self.embedder.embedding(item.instruction, item.input),
        )
        if self._histogram is not None:
            self._histogram.observe(difficulty.value)
        item = item.with_changes(difficulty=difficulty)
        placed = UNPLACED
        key = rank_key(item)
        if self.sink is not None:
            await self.sink.send(item.id, key[0], difficulty.value, embedding.vector)
        elif self.centroids is not None:
            placed = self.centroids.place(embedding.vector)
            await self.centroids.observe(embedding.vector, key)
        cut = placed.cut
        selection = Selection(
            cluster=placed.cluster, model_version=placed.version,
            embedding_model=self.embedder.model,
            mode="exact" if self.sink is not None else "online",
            cut_level=None if cut is None else cut[0],
            cut_difficulty=None if cut is None else cut[1],
            stream_high_share=placed.high_share,
            pooling=embedding.pooling, normalization=embedding.normalization)
        return item.with_changes(selection=selection)


class _Roles(Protocol):
    def __getitem__(self, role: str, /) -> Any: ...


@contextlib.asynccontextmanager
async def selector_for(
    config: Config, bootstrap: str, roles: _Roles, metrics: Metrics | None
) -> AsyncIterator[Selector | None]:
    """The score stage's selector when ``routing_policy = "cluster_quota"``, else None."""
    if config.pipeline.routing_policy != "cluster_quota":
        yield None
        return
    selection = config.selection
    embedding_model = config.role("embedding").model
    difficulty_model = config.role("difficulty").model
    difficulty_client: RawPoster = roles["difficulty"]
    # Before the first item: a server with wrong prompt logprobs is corrected or refused.
    alignment = await check_alignment(
        difficulty_client,
        where=f"{config.role('difficulty').base_url} (model {difficulty_model})")
    difficulty = DifficultyScorer(difficulty_client, selection.difficulty_metric,
                                  difficulty_model, max_chars=selection.max_prompt_chars,
                                  alignment=alignment)
    embedder = Embedder(roles["embedding"], embedding_model, max_chars=selection.max_prompt_chars,
                        pooling=selection.pooling, normalize=selection.normalize)
    if is_exact(selection):
        async with SignalSink(config.kafka, bootstrap, selection.exact_run_id) as sink:
            yield Selector(difficulty, embedder, None, metrics, sink=sink)
        return
    async with SharedCentroids(config.kafka, bootstrap, selection,
                               embedding_model=embedding_model, metrics=metrics) as shared:
        yield Selector(difficulty, embedder, shared, metrics)
