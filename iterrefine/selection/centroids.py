"""The diversity clusters: a versioned centroid model, assignment, and its online trainer.

Every worker that assigns clusters holds the same :class:`CentroidModel` (shared
through Kafka, :mod:`iterrefine.selection.shared`), so they agree on cluster ids:
assignment is a pure function of the model's bytes and the vector (nearest centroid,
lowest index on a tie).

One worker at a time trains (:class:`Trainer`): it collects ``warmup`` vectors, fits
scikit-learn's ``MiniBatchKMeans`` on them (version 1), then refines the centroids with
``partial_fit`` on every ``batch_size`` further vectors (version 2, 3, …): a centroid
keeps its id (its meaning) from version to version, it only moves.

``partial_fit`` alone never follows topics that arrive after the warm-up (a centroid
far from every new vector never moves). So every ``refit_every`` vectors the trainer
refits from scratch (k-means++ and Lloyd) on its ``refit_window`` most recent vectors,
then matches the new centroids to the old ones (Hungarian, on squared distance): a new
centroid within one mean within-cluster spread of an old one inherits its cluster id;
every other gets a fresh id, and the old centroids left unmatched are retired. Ids are
never reused, so a cluster id means one region of the space for the whole stream, and
the route's running rank per cluster id stays meaningful.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Final, NamedTuple

import msgspec
import numpy as np
from numpy.typing import NDArray

from iterrefine.config import SelectionConfig
from iterrefine.errors import IterrefineError
from iterrefine.selection._cuts import NO_CUT, cuts, high_share, nearest_rows
from iterrefine.selection.embeddings import Vector

#: Warm-up fits take the best of this many k-means++ starts.
_WARMUP_INITS: Final = 3
#: A vector farther than this many mean squared spreads from every centroid is novel;
#: ``refit_every / 10`` novel vectors (at least ``_MIN_NOVEL``) bring the refit forward.
_NOVEL_SPREADS: Final = 4.0
_MIN_NOVEL: Final = 20
#: Relative bound on how far the novelty test's two float64 forms of a squared distance
#: can differ: rounding gives ~dim · 2⁻⁵³ (1.4e-14 at dim 64); 1e-9 holds to dim 10⁵.
_EXPANSION_ERROR: Final = 1e-9


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
    #: The cluster id of each row (empty: the row number, as before refits existed).
    ids: list[int] = []
    #: The lowest id never given out; and how many centroids refits have retired.
    next_id: int = 0
    retired: int = 0
    #: Per row, the cluster's quota cut on the trainer's recent items (``_cuts``):
    #: level 0 = no cut (too few recent items).
    cut_levels: list[int] = []
    cut_difficulties: list[float] = []
    #: Share of judge-high items among the trainer's recent items (None: none known). A
    #: cluster the route has seen little of borrows it as evidence of where its cut falls
    #: (:class:`iterrefine.selection.quota.ClusterQuota`); it travels with the model so
    #: that every route worker borrows the same.
    high_share: float | None = None

    def matrix(self) -> NDArray[np.float64]:
        array = np.frombuffer(self.centroids, dtype="<f4").reshape(self.k, self.dim)
        return array.astype(np.float64)

    def row_ids(self) -> list[int]:
        return self.ids or list(range(self.k))


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


class Placement(NamedTuple):
    """Where the shared model puts a vector (all None/0 before the first model)."""

    cluster: int | None
    version: int
    #: The cluster's quota cut on the trainer's recent items, if it has one.
    cut: tuple[int, float] | None
    #: ``CentroidModel.high_share`` of the version that placed it.
    high_share: float | None


#: Where a vector is before any model exists (online warm-up) or without one (exact mode).
UNPLACED: Final = Placement(None, 0, None, None)


class Assigner:
    """Nearest-centroid assignment under one model version (precomputed norms)."""

    def __init__(self, model: CentroidModel) -> None:
        self.model = model
        self._centroids = model.matrix()
        self._norms = (self._centroids**2).sum(axis=1)
        self._ids = model.row_ids()

    def assign(self, vector: Vector) -> int:
        return self._ids[self._row(vector)]

    def _row(self, vector: Vector) -> int:
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

    def place(self, vector: Vector) -> tuple[int, tuple[int, float] | None]:
        """(cluster id, its quota cut or None) of ``vector``."""
        row = self._row(vector)  # once: the cluster id and the cut are both the row's
        cluster = self._ids[row]
        levels = self.model.cut_levels
        if not levels or levels[row] == NO_CUT:
            return cluster, None
        return cluster, (levels[row], self.model.cut_difficulties[row])


def model_from_centers(
    centers: NDArray[np.floating], *, version: int, embedding_model: str, trained_on: int,
    writer: str, ids: list[int] | None = None, next_id: int | None = None, retired: int = 0,
    cut: tuple[list[int], list[float]] = ([], []),
) -> CentroidModel:
    k, dim = centers.shape
    data = np.ascontiguousarray(centers, dtype="<f4").tobytes()
    row_ids = list(range(k)) if ids is None else ids
    return CentroidModel(
        version=version, k=k, dim=dim, centroids=data, embedding_model=embedding_model,
        trained_on=trained_on, writer=writer, ids=row_ids,
        next_id=max(row_ids) + 1 if next_id is None else next_id, retired=retired,
        cut_levels=cut[0], cut_difficulties=cut[1],
    )


def matched_ids(
    new: NDArray[np.floating], old: CentroidModel, spread: float
) -> tuple[list[int], int, int]:
    """Ids for the rows of ``new``: an old centroid's within ``spread`` (squared distance,
    one-to-one, Hungarian), else fresh ones. (ids, next id, how many old ids retired)."""
    # scipy comes with scikit-learn; it ships no type stubs.
    from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped]

    before = old.matrix()
    after = np.asarray(new, dtype=np.float64)
    cost = np.maximum((after**2).sum(axis=1)[:, None] + (before**2).sum(axis=1)[None, :]
                      - 2.0 * after @ before.T, 0.0)
    rows, cols = linear_sum_assignment(cost)
    old_ids = old.row_ids()
    ids = [-1] * len(new)
    for row, col in zip(rows, cols, strict=True):
        if cost[row, col] <= spread:
            ids[row] = old_ids[col]
    next_id = max(old.next_id, max(old_ids) + 1)
    for row, found in enumerate(ids):
        if found < 0:
            ids[row], next_id = next_id, next_id + 1
    kept = sum(1 for found in ids if found in set(old_ids))
    return ids, next_id, len(old_ids) - kept


@dataclass(frozen=True, slots=True)
class _Centres:
    """The last fit's centres with what the per-item novelty test needs of them."""

    matrix: NDArray[np.float64]
    #: ‖c‖² per row, and the largest ‖c‖ (for the expansion's error bound).
    norms: NDArray[np.float64]
    largest: float

    @classmethod
    def of(cls, matrix: NDArray[np.float64]) -> _Centres:
        norms = (matrix**2).sum(axis=1)
        return cls(matrix, norms, math.sqrt(float(norms.max())))


class Trainer:
    """Online k-means over the vectors one worker sees; proposes new model versions."""

    def __init__(self, config: SelectionConfig, *, embedding_model: str, writer: str) -> None:
        self.config = config
        self.embedding_model = embedding_model
        self.writer = writer
        self._buffer: list[Vector] = []
        # The newest vectors with their rank keys: the refits' sample and the cuts' items.
        self._recent: deque[tuple[Vector, tuple[int, float] | None]] = deque(
            maxlen=max(config.refit_window, config.warmup))
        self._since_refit = 0
        self._refit_next = False
        # Novelty: vectors far from every centroid of the last fit bring a refit forward.
        self._centres: _Centres | None = None
        self._spread = 0.0
        self._novel = 0
        # The estimator and the accepted version its state corresponds to.
        self._kmeans: object | None = None
        self._kmeans_version = 0
        self._trained_on = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def collect(self, vector: Vector, key: tuple[int, float] | None = None) -> None:
        """Keep one vector (and its rank key) for the next fit (bounded: the newest)."""
        self._buffer.append(vector)
        limit = max(self.config.warmup, 4 * self.config.batch_size)
        if len(self._buffer) > limit:
            del self._buffer[: len(self._buffer) - limit]
        self._recent.append((vector, key))
        self._since_refit += 1
        centres = self._centres  # read once: a fit off the event loop replaces it
        if centres is not None and self.config.refit_every:
            self._novel += self._is_novel(centres, vector)

    def _is_novel(self, centres: _Centres, vector: Vector) -> bool:
        """Whether ``vector`` lies farther than ``_NOVEL_SPREADS`` spreads from every centre,
        exactly as ``min(((centres - x) ** 2).sum(axis=1))`` says.

        That sum costs k × dim differences an item (~12 µs at k = 132, dim = 64). The
        expansion ‖c‖² − 2 c·x + ‖x‖² is one matrix-vector product (~3 µs) and differs from
        it by far less than ``_EXPANSION_ERROR`` · (‖c‖ + ‖x‖)² (both are float64 sums of
        that magnitude), so it decides alone unless the nearest distance is within that of
        the bar; then, and for a non-finite vector, the sum decides as before.
        """
        bar = _NOVEL_SPREADS * self._spread
        x = vector.astype(np.float64)
        squared = float(x @ x)
        expanded = float(np.min(centres.norms - 2.0 * (centres.matrix @ x))) + squared
        slack = _EXPANSION_ERROR * (centres.largest + math.sqrt(squared)) ** 2
        if expanded - slack > bar:
            return True
        if expanded + slack <= bar:
            return False
        return float(np.min(((centres.matrix - x) ** 2).sum(axis=1))) > bar

    def _refit_due(self, accepted: CentroidModel | None) -> bool:
        every = self.config.refit_every
        if accepted is None or not every or len(self._recent) < accepted.k:
            return False
        return self._since_refit >= every or self._novel >= max(_MIN_NOVEL, every // 10)

    def due(self, accepted: CentroidModel | None) -> bool:
        """Whether enough vectors are collected for the version after ``accepted``."""
        if self._refit_due(accepted):
            return True
        need = self.config.warmup if accepted is None else self.config.batch_size
        return len(self._buffer) >= need

    def take(self, accepted: CentroidModel | None = None) -> NDArray[np.float32]:
        """The vectors the next version is fitted on (the buffer starts again empty): the
        collected ones, or the newest ``refit_window`` when a refit is due."""
        self._refit_next = self._refit_due(accepted)
        if self._refit_next:
            self._since_refit = self._novel = 0
            self._buffer = []
            return np.stack([vector for vector, _ in
                             list(self._recent)[-self.config.refit_window:]])
        data, self._buffer = np.stack(self._buffer), []
        return data

    def fit(self, data: NDArray[np.float32], accepted: CentroidModel | None) -> CentroidModel:
        """The version after ``accepted`` fitted on ``data`` (CPU-bound: run it off-loop).

        On one thread: these fits are small (a few thousand vectors), and scikit-learn's
        OpenMP threads, one per core, spin against the stage's own work and every other
        process on the host. With two other busy processes on 2 cores the online path
        (benchmarks/selection.py --quick) ran 1.8-5.1k items/s with them and 6.1-9.2k on
        one thread; on an idle host the same within 15 %.
        """
        from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

        with threadpool_limits(limits=1):
            if accepted is None:
                model = self._fit_warmup(data)
            elif self._refit_next:
                model = self._refit(data, accepted)
            else:
                model = self._refine(data, accepted)
            return self._with_cuts(model)

    def propose(self, accepted: CentroidModel | None) -> CentroidModel | None:
        """The next version after ``accepted`` when enough vectors are collected."""
        if not self.due(accepted):
            return None
        return self.fit(self.take(accepted), accepted)

    def accepted(self, model: CentroidModel, proposal: CentroidModel | None) -> None:
        """The model topic accepted ``model``; keep the estimator iff it was our proposal."""
        if proposal is None or model.version != proposal.version or model.writer != self.writer:
            self._kmeans = None  # someone else's model: restart from its centroids
        else:
            self._kmeans_version = model.version
        self._trained_on = max(self._trained_on, model.trained_on)

    def _with_cuts(self, model: CentroidModel) -> CentroidModel:
        """``model`` with each cluster's quota cut on the recent items, and the spread its
        novelty test measures against."""
        recent = list(self._recent)
        if not recent:
            return model
        data = np.stack([vector for vector, _ in recent]).astype(np.float64)
        centres = model.matrix()
        rows = nearest_rows(centres, data)
        self._centres = _Centres.of(centres)
        self._spread = float(((data - centres[rows]) ** 2).sum(axis=1).mean())
        keys = [key for _, key in recent]
        found = cuts(centres, data, keys, self.config.k_ratio, rows)
        return msgspec.structs.replace(model, cut_levels=found[0], cut_difficulties=found[1],
                                       high_share=high_share(keys))

    def _fit_warmup(self, data: NDArray[np.float32]) -> CentroidModel:
        from sklearn.cluster import MiniBatchKMeans  # imported on first use: ~0.5 s

        kmeans = MiniBatchKMeans(
            n_clusters=self.config.k, random_state=self.config.random_state,
            batch_size=self.config.batch_size, n_init=_WARMUP_INITS,
            compute_labels=False,  # only the centres are used: skip labelling the data again
        )
        kmeans.fit(data)
        kmeans.set_params(reassignment_ratio=0.0)
        self._kmeans, self._kmeans_version = kmeans, 0
        self._trained_on = len(data)
        return model_from_centers(
            kmeans.cluster_centers_, version=1, embedding_model=self.embedding_model,
            trained_on=self._trained_on, writer=self.writer,
        )

    def _refit(self, data: NDArray[np.float32], accepted: CentroidModel) -> CentroidModel:
        from sklearn.cluster import KMeans

        kmeans = KMeans(n_clusters=accepted.k, n_init=1,
                        random_state=self.config.random_state + accepted.version).fit(data)
        spread = float(kmeans.inertia_) / len(data)
        ids, next_id, retired = matched_ids(kmeans.cluster_centers_, accepted, spread)
        self._kmeans = None  # partial_fit continues from these centroids
        self._trained_on = accepted.trained_on + self.config.refit_every
        return model_from_centers(
            kmeans.cluster_centers_, version=accepted.version + 1,
            embedding_model=self.embedding_model, trained_on=self._trained_on,
            writer=self.writer, ids=ids, next_id=next_id, retired=accepted.retired + retired,
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
                compute_labels=False,  # only the centres are used: skip labelling each batch
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
            writer=self.writer, ids=accepted.row_ids(), next_id=accepted.next_id,
            retired=accepted.retired,
        )
