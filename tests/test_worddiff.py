"""Word-level diffs for show and view."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iterrefine.tools.worddiff import similarity, word_diff

pytestmark = pytest.mark.unit


@given(st.text(max_size=200), st.text(max_size=200))
def test_pieces_rebuild_both_texts(before: str, after: str) -> None:
    """equal+delete pieces rebuild the old text, equal+insert the new one, exactly."""
    pieces = word_diff(before, after)
    assert "".join(t for op, t in pieces if op != "insert") == before
    assert "".join(t for op, t in pieces if op != "delete") == after


def test_changes_are_whole_words() -> None:
    """A changed word is deleted and inserted as a word, the rest stays equal."""
    assert word_diff("Explain photosynthesis briefly.", "Explain photosynthesis in steps.") == [
        ("equal", "Explain photosynthesis "), ("delete", "briefly"), ("insert", "in steps"),
        ("equal", "."),
    ]
    assert similarity("a b c", "a b c") == 1.0
