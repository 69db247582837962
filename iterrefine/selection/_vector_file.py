"""The exact selection's vectors on disk: appended as they arrive, read memory-mapped.

One float32 row per item id (a redelivered signal overwrites its row). What stays in
RAM per item is its id, row number, judge level and difficulty (~150 bytes); the rows
themselves are the file's, so 100,000 items of a 4,096-dimension model (1.6 GB) are
paged in by k-means as it reads them, and the kernel may drop those pages again.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from pathlib import Path

import numpy as np

from iterrefine.errors import IterrefineError

#: Rows copied at a time when a subset is compacted into a second file.
_CHUNK_ROWS = 4096


class VectorFile:
    """Rows keyed by item id, with each item's judge level and difficulty beside them."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="selection-vectors-", suffix=".f32", dir=directory)
        self.path = Path(name)
        self._file = os.fdopen(fd, "r+b")
        self._extra: Path | None = None
        self.dim: int | None = None
        self.rows: dict[str, int] = {}
        self.levels = array("b")
        self.difficulties = array("d")

    def __len__(self) -> int:
        return len(self.rows)

    def put(self, item_id: str, level: int, difficulty: float, vector: bytes, dim: int) -> None:
        if self.dim is None:
            self.dim = dim
        if dim != self.dim or len(vector) != dim * 4:
            raise IterrefineError(
                f"item {item_id!r}: a {dim}-dimension vector ({len(vector)} bytes) among "
                f"{self.dim}-dimension ones: the embedding model changed during the run",
                reason="embedding_dim_mismatch")
        row = self.rows.get(item_id)
        if row is None:
            row = self.rows[item_id] = len(self.levels)
            self.levels.append(level)
            self.difficulties.append(difficulty)
        else:  # a redelivered signal: the same item, its newest values
            self.levels[row], self.difficulties[row] = level, difficulty
        self._file.seek(row * dim * 4)
        self._file.write(vector)

    def matrix(self, rows: list[int]) -> np.memmap:
        """``rows`` as one writable memory-mapped float32 matrix (a copy on disk if a subset)."""
        self._file.flush()
        dim = self.dim or 1
        everything = len(rows) == len(self.levels) and rows == sorted(rows)
        if everything:
            return np.memmap(self.path, dtype="<f4", mode="r+", shape=(len(rows), dim))
        source = np.memmap(self.path, dtype="<f4", mode="r", shape=(len(self.levels), dim))
        fd, name = tempfile.mkstemp(prefix="selection-subset-", suffix=".f32",
                                    dir=self.path.parent)
        os.close(fd)
        self._extra = Path(name)
        target = np.memmap(self._extra, dtype="<f4", mode="w+", shape=(len(rows), dim))
        for start in range(0, len(rows), _CHUNK_ROWS):
            chosen = rows[start:start + _CHUNK_ROWS]
            target[start:start + len(chosen)] = source[chosen]
        target.flush()
        del source
        return target

    def close(self) -> None:
        """Close and delete the files."""
        self._file.close()
        self.path.unlink(missing_ok=True)
        if self._extra is not None:
            self._extra.unlink(missing_ok=True)
