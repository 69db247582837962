"""The diversity clusters: a versioned centroid model, assignment, and its online trainer.

Every worker that assigns clusters holds the same :class:`CentroidModel` (shared
through Kafka, :mod:`iterrefine.selection.shared`), so they agree on cluster ids:
assignment is a pure function of the model's bytes and the vector (nearest centroid,
lowest index on a tie).

One worker at a time trains (:class:`Trainer`): it collects ``warmup`` vectors, fits
scikit-learn's ``MiniBatchKMeans`` on them (version 1), then refines the centroids with
``partial_fit`` on every ``batch_size`` further vectors (version 2, 3, …). Random
reassignment of small clusters is off after warm-up: a centroid keeps its id (its
meaning) from version to version, it only moves.
"""

from __future__ import annotations

import warnings
from typing import Final

import msgspec
import numpy as np
from numpy.typing import NDArray

from iterrefine.config import SelectionConfig
from iterrefine.errors import IterrefineError
from iterrefine.selection.embeddings import Vector

#: Warm-up fits take the best of this many k-means++ starts.
_WARMUP_INITS: Final = 3


class CentroidModel(msgspec.Struct, frozen=True, kw_only=True):
    """One version of the shared centroid model (msgpack on the model topic)."""

    version: int
    k: int
    dim: int
    #: ``k × dim`` float32, little-endian, row-major.
    centroids: bytes
    embedding_model: str
    #: Vectors the model has been fitted on so far.
    trained_on: int
    #: Which worker proposed it (for logs; readers never trust it for ordering).
    writer: str

    def matrix(self) -> NDArray[np.float64]:
        array = np.frombuffer(self.centroids, dtype="<f4").reshape(self.k, self.dim)
        return array.astype(np.float64)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CentroidModel)


def encode_model(model: CentroidModel) -> bytes:
    return _encoder.encode(model)


def decode_model(data: bytes) -> CentroidModel:
    model = _decoder.decode(data)
    if len(model.centroids) != model.k * model.dim * 4:
        raise ValueError(f"centroid model v{model.version}: {len(model.centroids)} bytes "
                         f"for k={model.k}, dim={model.dim}")
    return model


class Assigner:
    """Nearest-centroid assignment under one model version (precomputed norms)."""

    def __init__(self, model: CentroidModel) -> None:
        self.model = model
        self._centroids = model.matrix()
        self._norms = (self._centroids**2).sum(axis=1)

    def assign(self, vector: Vector) -> int:
        if vector.shape != (self.model.dim,):
            raise IterrefineError(
                f"embedding has {vector.shape[-1]} dimensions, the centroid model "
                f"v{self.model.version} has {self.model.dim}: the embedding model changed; "
                "start a new model topic (another topic_prefix) for the new model",
                reason="embedding_dim_mismatch",
            )
        x = vector.astype(np.float64)
        distances = self._norms - 2.0 * (self._centroids @ x)
        return int(np.argmin(distances))


def model_from_centers(
    centers: NDArray[np.floating], *, version: int, embedding_model: str, trained_on: int,
    writer: str,
) -> CentroidModel:
    k, dim = centers.shape
    data = np.ascontiguousarray(centers, dtype="<f4").tobytes()
    return CentroidModel(
        version=version, k=k, dim=dim, centroids=data, embedding_model=embedding_model,
        trained_on=trained_on, writer=writer,
    )


class Trainer:
    """Online k-means over the vectors one worker sees; proposes new model versions."""

    def __init__(self, config: SelectionConfig, *, embedding_model: str, writer: str) -> None:
        self.config = config
        self.embedding_model = embedding_model
        self.writer = writer
        self._buffer: list[Vector] = []
        # The estimator and the accepted version its state corresponds to.
        self._kmeans: object | None = None
        self._kmeans_version = 0
        self._trained_on = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def collect(self, vector: Vector) -> None:
        """Keep one vector for the next fit (bounded: the newest are kept)."""
        self._buffer.append(vector)
        limit = max(self.config.warmup, 4 * self.config.batch_size)
        if len(self._buffer) > limit:
            del self._buffer[: len(self._buffer) - limit]

    def due(self, accepted: CentroidModel | None) -> bool:
        """Whether enough vectors are collected for the version after ``accepted``."""
        need = self.config.warmup if accepted is None else self.config.batch_size
        return len(self._buffer) >= need

    def take(self) -> NDArray[np.float32]:
        """The collected vectors, as one array; the buffer starts again empty."""
        data, self._buffer = np.stack(self._buffer), []
        return data

    def fit(self, data: NDArray[np.float32], accepted: CentroidModel | None) -> CentroidModel:
        """The version after ``accepted`` fitted on ``data`` (CPU-bound: run it off-loop)."""
        return self._fit_warmup(data) if accepted is None else self._refine(data, accepted)

    def propose(self, accepted: CentroidModel | None) -> CentroidModel | None:
        """The next version after ``accepted`` when enough vectors are collected."""
        if not self.due(accepted):
            return None
        return self.fit(self.take(), accepted)

    def accepted(self, model: CentroidModel, proposal: CentroidModel | None) -> None:
        """The model topic accepted ``model``; keep the estimator iff it was our proposal."""
        if proposal is None or model.version != proposal.version or model.writer != self.writer:
            self._kmeans = None  # someone else's model: restart from its centroids
        else:
            self._kmeans_version = model.version
        self._trained_on = max(self._trained_on, model.trained_on)

    def _fit_warmup(self, data: NDArray[np.float32]) -> CentroidModel:
        from sklearn.cluster import MiniBatchKMeans  # imported on first use: ~0.5 s

        kmeans = MiniBatchKMeans(
            n_clusters=self.config.k, random_state=self.config.random_state,
            batch_size=self.config.batch_size, n_init=_WARMUP_INITS,
        )
        kmeans.fit(data)
        kmeans.set_params(reassignment_ratio=0.0)
        self._kmeans, self._kmeans_version = kmeans, 0
        self._trained_on = len(data)
        return model_from_centers(
            kmeans.cluster_centers_, version=1, embedding_model=self.embedding_model,
            trained_on=self._trained_on, writer=self.writer,
        )

    def _refine(self, data: NDArray[np.float32], accepted: CentroidModel) -> CentroidModel:
        from sklearn.cluster import MiniBatchKMeans

        kmeans = self._kmeans
        if not isinstance(kmeans, MiniBatchKMeans) or self._kmeans_version != accepted.version:
            # Continue from the accepted centroids (another trainer's, after a handover).
            kmeans = MiniBatchKMeans(
                n_clusters=accepted.k, init=accepted.matrix(), n_init=1,
                random_state=self.config.random_state, reassignment_ratio=0.0,
                batch_size=self.config.batch_size,
            )
        with warnings.catch_warnings():
            # A batch smaller than k leaves some centroids without points: expected here.
            warnings.simplefilter("ignore", RuntimeWarning)
            kmeans.partial_fit(data)
        self._kmeans = kmeans
        self._trained_on = accepted.trained_on + len(data)
        return model_from_centers(
            kmeans.cluster_centers_, version=accepted.version + 1,
            embedding_model=self.embedding_model, trained_on=self._trained_on,
            writer=self.writer,
        )
