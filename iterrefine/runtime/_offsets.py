"""Per-partition offset tracking: commit only the contiguous prefix of finished work.

Messages of one partition finish out of order (LLM calls take 0.5–30 s), but a
Kafka commit says "everything before this offset is done". So we remember the
offsets we actually received, in order, and commit up to the first one that is
not finished yet (the Confluent Parallel Consumer model). We never assume that
offset + 1 is the next record: compaction and control records leave gaps.
"""

from __future__ import annotations

from collections import deque


class PartitionTracker:
    """Offsets received from one partition and which of them are finished."""

    __slots__ = ("_done", "_pending", "committed", "inflight", "revoked", "to_commit")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        #: The offset last committed (the next offset to read), or None before the first commit.
        self.committed: int | None = None
        #: The newest commit point found but not yet acknowledged by the broker.
        self.to_commit: int | None = None
        self.inflight = 0
        #: Set when the partition is taken away; late completions are then ignored.
        self.revoked = False

    def received(self, offset: int) -> None:
        self._pending.append(offset)
        self.inflight += 1

    def finished(self, offset: int) -> None:
        if self.revoked:
            return
        self._done.add(offset)
        self.inflight -= 1

    def abandoned(self) -> None:
        """A message that will not finish here (cancelled): it stays uncommitted."""
        self.inflight -= 1

    def commit_point(self) -> int | None:
        """Pop the finished prefix; return the offset to commit if it moved, else None."""
        last: int | None = None
        pending, done = self._pending, self._done
        while pending and pending[0] in done:
            last = pending.popleft()
            done.discard(last)
        if last is None:
            return None
        return last + 1

    @property
    def backlog(self) -> int:
        """Messages received but not yet committed (finished or not)."""
        return len(self._pending)
