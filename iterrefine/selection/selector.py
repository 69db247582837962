"""Gathering the selection signals of a scored item: difficulty and diversity cluster.

Runs in the score stage, right after the judge (and the task filter), for items that
stay in the pipeline: the ``difficulty`` role scores the instruction from completion
logprobs while the ``embedding`` role embeds it; the vector is assigned to the shared
centroid model's nearest cluster and handed to the trainer, then dropped. The item
leaves with its :class:`~iterrefine.item.model.Difficulty` and
:class:`~iterrefine.item.model.Selection` (cluster id and model version, no vector).
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
from iterrefine.selection.difficulty import DifficultyScorer, RawPoster
from iterrefine.selection.embeddings import Embedder, Vector
from iterrefine.selection.shared import SharedCentroids


class Centroids(Protocol):
    """What the selector needs of the shared model (``SharedCentroids`` implements it)."""

    def assign(self, vector: Vector) -> tuple[int | None, int]: ...

    async def observe(self, vector: Vector) -> None: ...


class Selector:
    def __init__(
        self,
        difficulty: DifficultyScorer,
        embedder: Embedder,
        centroids: Centroids,
        metrics: Metrics | None = None,
    ) -> None:
        self.difficulty = difficulty
        self.embedder = embedder
        self.centroids = centroids
        self._histogram = (
            None if metrics is None else metrics.selection_difficulty.labels(difficulty.metric)
        )

    async def annotate(self, item: Item) -> Item:
        difficulty, vector = await asyncio.gather(
            self.difficulty.score(item.instruction, item.input, item.output),
            self.embedder.embed(item.instruction, item.input),
        )
        cluster, version = self.centroids.assign(vector)
        await self.centroids.observe(vector)
        if self._histogram is not None:
            self._histogram.observe(difficulty.value)
        selection = Selection(cluster=cluster, model_version=version,
                              embedding_model=self.embedder.model)
        return item.with_changes(difficulty=difficulty, selection=selection)


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
    embedding_model = config.role("embedding").model
    difficulty_model = config.role("difficulty").model
    difficulty_client: RawPoster = roles["difficulty"]
    role = config.role("difficulty")
    # Before the first item: a server with wrong prompt logprobs is corrected or refused.
    alignment = await check_alignment(
        difficulty_client, where=f"{role.base_url} (model {difficulty_model})")
    async with SharedCentroids(config.kafka, bootstrap, config.selection,
                               embedding_model=embedding_model, metrics=metrics) as shared:
        yield Selector(
            DifficultyScorer(difficulty_client, config.selection.difficulty_metric,
                             difficulty_model, max_chars=config.selection.max_prompt_chars,
                             alignment=alignment),
            Embedder(roles["embedding"], embedding_model,
                     max_chars=config.selection.max_prompt_chars),
            shared,
            metrics,
        )
