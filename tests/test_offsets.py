"""Contiguous-prefix commit tracking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iterrefine.runtime import PartitionTracker

pytestmark = pytest.mark.unit


def test_commit_point_waits_for_the_first_unfinished_offset() -> None:
    """Only the contiguous finished prefix is committed, using real offsets (with gaps)."""
    t = PartitionTracker()
    for offset in (10, 11, 15, 16):  # gaps: never assume offset + 1 is next
        t.received(offset)
    t.finished(15)
    assert t.commit_point() is None
    t.finished(10)
    assert t.commit_point() == 11
    t.finished(11)
    assert t.commit_point() == 16  # next to read after 11 is 15, which is done too → 16
    t.finished(16)
    assert t.commit_point() == 17
    assert t.backlog == 0


def test_revoked_tracker_ignores_late_completions() -> None:
    """After revocation a late completion does not move the commit point."""
    t = PartitionTracker()
    t.received(0)
    t.revoked = True
    t.finished(0)
    assert t.commit_point() is None


@given(st.permutations(list(range(50))))
def test_property_any_completion_order_commits_everything(order: list[int]) -> None:
    """Property: whatever the completion order, all offsets end committed, never past a gap."""
    t = PartitionTracker()
    for offset in range(50):
        t.received(offset * 2)
    done: set[int] = set()
    last = 0
    for index in order:
        t.finished(index * 2)
        done.add(index)
        point = t.commit_point()
        if point is not None:
            last = point
        # everything below the commit point is finished
        assert all(o // 2 in done for o in range(0, last, 2))
    assert last == 99
