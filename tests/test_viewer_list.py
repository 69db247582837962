"""The viewer's list page: SIMULATED marker, revised instruction beside the original, text
search, pages. Page time at 100,000 items: benchmarks/viewer_list.py."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from iterrefine.io.export import Terminal
from iterrefine.io.outputs import write_outputs
from iterrefine.item.model import Provenance, Round
from iterrefine.item.records import item_from_raw
from iterrefine.tools.story import stories_from_export
from iterrefine.tools.viewer import Viewer
from iterrefine.tools.viewer._list import PAGE_SIZE

from .test_show_view import _browser

COUNT = 250  # three pages of 100


def _terminal(n: int) -> Terminal:
    """Item n: every 5th refined (its revision says "Zebra-n"), every 7th rejected, the
    first 100 made by the simulator."""
    raw = {"id": f"item-{n:03d}", "instruction": f"Describe topic number {n}.",
           "output": f"About {n}."}
    item = item_from_raw(json.dumps(raw).encode())
    if n < 100:
        item = item.with_changes(provenance=Provenance(simulated=True))
    if n % 5 == 0:
        revised = f"Describe Zebra-{n} step by step."
        item = item.with_changes(
            instruction=revised, status="refined", round=1,
            rounds=(Round(number=1, instruction=revised, input="", feedback=None,
                          backbone_answer="ok", winner="B", explanation="clearer"),))
        return Terminal(id=item.id, outcome="curated", revision=0, timestamp_ms=0, item=item,
                        meta={}, raw=b"")
    if n % 7 == 0:
        item = item.with_changes(status="rejected", status_reason=f"too vague <b>{n}</b>")
        return Terminal(id=item.id, outcome="rejected", revision=0, timestamp_ms=0, item=item,
                        meta={}, raw=b"")
    item = item.with_changes(status="high")
    return Terminal(id=item.id, outcome="curated", revision=0, timestamp_ms=0, item=item,
                    meta={}, raw=b"")


@pytest.fixture
async def viewer(tmp_path: Path) -> AsyncIterator[Viewer]:
    paths, _ = write_outputs([_terminal(n) for n in range(COUNT)], tmp_path / "out.jsonl")
    async with Viewer(stories_from_export(paths.curated), source="test") as served:
        yield served


async def _page(viewer: Viewer, **query: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(viewer.url, params=query) as response:
        assert response.status == 200
        return await response.text()


def _ids(page: str) -> list[str]:
    return re.findall(r"<a href='/item/(item-\d+)'>", page)


@pytest.mark.unit
async def test_rows_show_the_revised_instruction_beside_the_original(viewer: Viewer) -> None:
    """A refined row has both instructions; a kept row says its instruction is unchanged."""
    page = await _page(viewer, q="item-005")
    assert "1 of 250 items" in page
    row = page.split("item-005'>", 1)[1].split("</tr>", 1)[0]
    assert "Describe topic number 5." in row and "Describe Zebra-5 step by step." in row
    kept = (await _page(viewer, q="item-001")).split("item-001'>", 1)[1].split("</tr>", 1)[0]
    assert "Describe topic number 1." in kept and "unchanged" in kept
    assert "<th>original instruction</th><th>revised instruction</th>" in page


@pytest.mark.unit
async def test_simulated_items_are_marked_row_by_row_and_in_a_banner(viewer: Viewer) -> None:
    """The banner counts simulator-made items; each of their rows carries SIMULATED."""
    assert "SIMULATED LLM output (not a model): 100 of 250 items" in await _page(viewer)
    for number in ("0", "2"):
        page = await _page(viewer, page=number)
        simulated = [i for i in _ids(page) if int(i.split("-")[1]) < 100]
        assert page.count(">SIMULATED</span>") == len(simulated) > 0


@pytest.mark.unit
async def test_search_is_case_blind_over_ids_and_both_instructions(viewer: Viewer) -> None:
    """`q` finds text only a revision has, ids and reasons; combines with the filters."""
    zebras = await _page(viewer, q="zEbRa")  # only in revised instructions
    assert f"{COUNT // 5} of 250 items" in zebras
    assert all(int(i.split("-")[1]) % 5 == 0 for i in _ids(zebras))
    assert "1 of 250 items" in await _page(viewer, q="item-042")
    assert "0 of 250 items" in await _page(viewer, q="zebra", status="rejected")
    vague = await _page(viewer, q="too vague", status="rejected")
    assert "of 250 items" in vague and _ids(vague)
    hostile = await _page(viewer, q="<script>x</script>")
    assert "<script>x" not in hostile and "value='&lt;script&gt;x&lt;/script&gt;'" in hostile
    assert "&lt;b&gt;" in vague and "<b>" not in vague.split("<table", 1)[1]


@pytest.mark.unit
async def test_pages_hold_100_rows_and_keep_the_search_and_filters(viewer: Viewer) -> None:
    """Page links carry q and the filters; the last page holds the rest; past it, the last."""
    first = await _page(viewer)
    assert len(_ids(first)) == PAGE_SIZE and "page 1 of 3" in first
    last = await _page(viewer, page="2")
    assert len(_ids(last)) == COUNT - 2 * PAGE_SIZE and "page 3 of 3" in last
    assert _ids(await _page(viewer, page="99")) == _ids(last)
    topics = await _page(viewer, q="topic", status="high")
    assert "page 1 of" in topics and "q=topic" in topics and "status=high" in topics
    shown = set(_ids(first)) | set(_ids(await _page(viewer, page="1"))) | set(_ids(last))
    assert len(shown) == COUNT  # every item on exactly one page


@pytest.mark.slow
async def test_list_page_in_headless_chromium(viewer: Viewer, tmp_path: Path) -> None:
    """Headless Chromium renders a searched, paged list: marker, both columns, nav."""
    url = f"{viewer.url}?q=describe&page=1"
    dom = await _browser("--dump-dom", url)
    shot = tmp_path / "list.png"
    await _browser(f"--screenshot={shot}", "--window-size=1280,900", "--hide-scrollbars", url)
    assert "250 of 250 items" in dom and "page 2 of 3" in dom
    assert "SIMULATED LLM output" in dom
    assert "Describe Zebra-" in dom and "Describe topic number" in dom and "unchanged" in dom
    assert "<input type=\"search\" name=\"q\" value=\"describe\"" in dom
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
