"""`iterrefine show` and `iterrefine view`: one item's story, in a terminal and in a browser."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from iterrefine.cli import main
from iterrefine.io.export import Terminal
from iterrefine.io.outputs import write_outputs
from iterrefine.item.model import Evaluation, Judgement, Round, Scores
from iterrefine.item.records import item_from_raw
from iterrefine.observe.logging import configure_logging
from iterrefine.tools.story import stories_from_export
from iterrefine.tools.viewer import Viewer

ORIGINAL = "Explain photosynthesis."
REFINED = "Explain step by step how plants turn light into chemical energy."
HOSTILE = "Ignore this <script>alert('owned')</script> please"


@pytest.fixture(autouse=True)
def _logging_back_to_real_stderr() -> Iterator[None]:
    """The CLI points logging at capsys' stderr; later tests must not write to it once closed."""
    yield
    configure_logging(json=True, stream=sys.__stderr__)


def _scores(value: float) -> Scores:
    return Scores(correctness=value, completeness=value, clarity=value, compliance=value,
                  reasoning=value)


def _judgement(value: float) -> Judgement:
    return Judgement(usable=True, reason="", scores=_scores(value), verdict="low",
                     justification="The instruction is vague.")


def _terminals() -> list[Terminal]:
    raw = {"id": "plant-1", "instruction": ORIGINAL, "input": "",
           "output": "Plants use light to make sugar."}
    refined = item_from_raw(json.dumps(raw).encode()).with_changes(
        judgement=_judgement(5.0), final_judgement=_judgement(8.0), quality="low",
        evaluation=Evaluation(backbone_answer="Plants eat light.", score=4,
                              text="Too thin.", suggestions=("Ask for steps.",)),
        rounds=(
            Round(number=1, instruction="Explain photosynthesis briefly.", input="",
                  feedback=None, backbone_answer="It is how plants eat.", winner="A",
                  explanation="Revision A keeps more detail than B."),
            Round(number=2, instruction=REFINED, input="", feedback="B lost: too short.",
                  backbone_answer="Light is absorbed by chlorophyll, then ...", winner="B",
                  explanation="B asks for the mechanism; the answer improves."),
        ),
        round=2, instruction=REFINED, output="Plants absorb light with chlorophyll and make "
        "sugar from carbon dioxide and water.", output_aligned=True, status="refined")
    hostile = item_from_raw(json.dumps({"id": "evil-1", "instruction": HOSTILE,
                                        "output": "No."}).encode()).with_changes(
        status="rejected", status_reason="not a reasoning task </td><script>x()</script>")
    dead = Terminal(id="raw-1", outcome="dlq", revision=0, timestamp_ms=0, item=None,
                    meta={"reason": "multi_turn", "stage": "score"}, raw=b'{"messages": []}')
    return [
        Terminal(id="plant-1", outcome="curated", revision=0, timestamp_ms=0, item=refined,
                 meta={}, raw=b""),
        Terminal(id="evil-1", outcome="rejected", revision=0, timestamp_ms=0, item=hostile,
                 meta={}, raw=b""),
        dead,
    ]


@pytest.fixture(params=["jsonl", "parquet"])
def export_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "parquet":
        pytest.importorskip("pyarrow")
    paths, counts = write_outputs(_terminals(), tmp_path / f"out.{request.param}")
    assert counts == {"curated": 1, "rejected": 1, "dlq": 1}
    return paths.curated


def test_show_prints_every_round_with_word_diffs(
    export_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """show ID --from EXPORT: original, evaluation, both rounds, verdicts, aligned output."""
    assert main(["show", "plant", "--from", str(export_file)]) == 0  # a unique id prefix
    out = capsys.readouterr().out
    for text in ("Explain photosynthesis.", "Plants eat light.", "round 1", "round 2",
                 "winner A", "Revision A keeps more detail than B.", "B lost: too short.",
                 "chlorophyll", "final (aligned output)", "before 5.00 → after 8.00"):
        assert text in out, text


def test_show_finds_rejected_and_dead_letters_beside_the_export(
    export_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rejected rows show their reason; a dead letter shows its reason and original bytes."""
    assert main(["show", "evil-1", "--from", str(export_file)]) == 0
    assert "not a reasoning task" in capsys.readouterr().out
    assert main(["show", "raw-1", "--from", str(export_file)]) == 0
    out = capsys.readouterr().out
    assert "multi_turn" in out and '{"messages": []}' in out
    assert main(["show", "nope", "--from", str(export_file)]) == 2


async def test_show_reads_the_terminal_topics_without_from(
    broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --from, show reads the item from the terminal topics of a real run."""
    from iterrefine.sim import SimServer

    from .pipeline_support import FAST_SIM, pipeline_config, run, sample_records

    async with SimServer(FAST_SIM, port=0) as sim:
        config = pipeline_config(broker, sim)
        records = [{"id": f"topic-{i}", **r} for i, r in enumerate(sample_records(4))]
        result = await run(config, tmp_path, records)
    assert result.complete
    argv = ["show", "topic-2", "--bootstrap", broker, "--topic-prefix", config.kafka.topic_prefix]
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out
    assert "item topic-2" in out and records[2]["instruction"][:30] in out
    # export reads the same topics into a training-ready Parquet file.
    shaped = tmp_path / "export.parquet"
    argv = ["export", "-o", str(shaped), "--shape", "alpaca", "--bootstrap", broker,
            "--topic-prefix", config.kafka.topic_prefix]
    assert await asyncio.to_thread(main, argv) == 0
    from iterrefine.io.outputs import read_rows

    rows = list(read_rows(shaped)) + list(read_rows(tmp_path / "export.rejected.parquet"))
    assert {r["id"] for r in rows} == {r["id"] for r in records}
    assert set(rows[0]) >= {"id", "instruction", "input", "output"} and "item" not in rows[0]


@pytest.mark.unit
async def test_viewer_lists_filters_and_escapes_item_text(tmp_path: Path) -> None:
    """The list filters by status/rounds/score change; item text with <script> is escaped."""
    paths, _ = write_outputs(_terminals(), tmp_path / "out.jsonl")
    async with Viewer(stories_from_export(paths.curated), source="test") as viewer, \
            aiohttp.ClientSession() as http:
        assert viewer.url.startswith("http://127.0.0.1:")
        async with http.get(viewer.url) as response:
            page = await response.text()
            assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert "3 of 3 items" in page
        assert "<script>" not in page and "&lt;script&gt;" in page
        async with http.get(viewer.url, params={"status": "refined", "rounds": "2",
                                                "change": "improved"}) as response:
            assert "1 of 3 items" in await response.text()
        async with http.get(viewer.url, params={"change": "worse"}) as response:
            assert "0 of 3 items" in await response.text()
        async with http.get(f"{viewer.url}item/evil-1") as response:
            page = await response.text()
        assert "<script>" not in page
        assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;" in page
        async with http.get(f"{viewer.url}item/missing") as response:
            assert response.status == 404


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH (apt-get install chromium); .ci/run installs it")


async def _browser(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-extensions", "--disable-background-networking",
        f"--user-data-dir={Path('/tmp') / ('iterrefine-chromium-' + uuid.uuid4().hex[:8])}",
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0
    return out.decode()


@pytest.mark.slow
async def test_item_page_in_headless_chromium(tmp_path: Path) -> None:
    """Headless Chromium renders the item page: original and refined instruction, a screenshot."""
    chromium = _chromium()
    assert chromium
    paths, _ = write_outputs(_terminals(), tmp_path / "out.jsonl")
    async with Viewer(stories_from_export(paths.curated), source=str(paths.curated)) as viewer:
        url = f"{viewer.url}item/plant-1"
        dom = await _browser("--dump-dom", url)
        shot = tmp_path / "item.png"
        await _browser(f"--screenshot={shot}", "--window-size=1280,1100",
                       "--hide-scrollbars", url)
        hostile = await _browser("--dump-dom", f"{viewer.url}item/evil-1")
    assert ORIGINAL in dom and REFINED in dom
    assert "B asks for the mechanism" in dom and "<del>" in dom and "<ins>" in dom
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    # The browser built no script element from item text: it stayed text.
    assert "<script>alert" not in hostile and "&lt;script&gt;alert" in hostile


@pytest.mark.unit
def test_list_filters_by_cluster_once_items_have_one(tmp_path: Path) -> None:
    """Items carrying a cluster (from a selection stage) get a cluster column and filter."""
    from iterrefine.tools.story import story_of_row
    from iterrefine.tools.viewer._list import ListIndex, list_page

    paths, _ = write_outputs(_terminals()[:1], tmp_path / "out.jsonl")
    row = json.loads(paths.curated.read_text())
    plain = story_of_row(row, "curated")
    clustered = story_of_row({**row, "item": {**row["item"], "cluster": 7}}, "curated")
    assert "<th>cluster</th>" not in list_page(ListIndex([plain]), {}, "", 0, "x")
    page = list_page(ListIndex([plain, clustered]), {"cluster": "7"}, "", 0, "x")
    assert "<th>cluster</th>" in page and "1 of 2 items" in page


def test_show_on_a_training_shape_export_says_to_export_full(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A slim export has no lineage: show exits 2 and names --shape full."""
    paths, _ = write_outputs(_terminals(), tmp_path / "slim.jsonl", shape="alpaca")
    assert main(["show", "plant-1", "--from", str(paths.curated)]) == 2
    assert "--shape full" in capsys.readouterr().err


async def test_view_command_serves_until_sigterm(tmp_path: Path) -> None:
    """`iterrefine view --from FILE --port 0` prints its 127.0.0.1 URL, serves, exits 0 on TERM."""
    paths, _ = write_outputs(_terminals(), tmp_path / "out.jsonl")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "iterrefine.cli", "view", "--from", str(paths.curated),
        "--port", "0", stderr=asyncio.subprocess.PIPE, cwd=Path(__file__).parent.parent)
    assert process.stderr is not None
    try:
        line = (await asyncio.wait_for(process.stderr.readline(), timeout=60)).decode()
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            assert "3 of 3 items" in await response.text()
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0


def test_show_marks_word_diffs_when_there_is_no_colour(
    export_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Piped (no colour), show's diffs stay readable: [-removed-] and {+added+} markers."""
    assert main(["show", "plant-1", "--from", str(export_file)]) == 0  # capsys: not a TTY
    out = capsys.readouterr().out
    assert "Explain [-photosynthesis-]{+step by step how plants" in out


@pytest.mark.unit
def test_show_colours_diffs_without_markers_on_a_terminal(tmp_path: Path) -> None:
    """On a colour terminal the diff is styled (strike/underline) and carries no markers."""
    import io

    from rich.console import Console

    from iterrefine.cli.show import render_story

    paths, _ = write_outputs(_terminals(), tmp_path / "out.jsonl")
    (story,) = [s for s in stories_from_export(paths.curated) if s.id == "plant-1"]
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system="truecolor", width=200)
    console.print(render_story(story, markers=console.color_system is None))
    text = buffer.getvalue()
    assert "\x1b[" in text and "[-" not in text and "{+" not in text


WEIRD_IDS = ["brace{1}", "{}", "slash/inside", "per%cent", "space d", "caf\u00e9", "q?x=1#f",
             "dot..", ".."]


def _weird_terminals() -> list[Terminal]:
    items = []
    for n, item_id in enumerate(WEIRD_IDS):
        raw = {"id": item_id, "instruction": f"Question {n}?", "output": "Answer."}
        item = item_from_raw(json.dumps(raw).encode()).with_changes(status="high")
        items.append(Terminal(id=item.id, outcome="curated", revision=0, timestamp_ms=0,
                              item=item, meta={}, raw=b""))
    return items


async def test_every_listed_id_is_reachable_and_every_page_has_the_headers(
    tmp_path: Path,
) -> None:
    """Ids with { } / % ? # and spaces open from their list link; 404 and 405 pages carry
    the CSP and nosniff headers like every other page."""
    import re

    paths, _ = write_outputs(_weird_terminals(), tmp_path / "out.jsonl")
    async with Viewer(stories_from_export(paths.curated), source="test") as viewer, \
            aiohttp.ClientSession() as http:
        async with http.get(viewer.url) as response:
            links = re.findall(r"href='(/item/[^']+)'", await response.text())
        assert len(links) == len(WEIRD_IDS)
        for link in links:
            async with http.get(viewer.url.rstrip("/") + link) as response:
                assert response.status == 200, link
        for method, path, status in (("GET", "item/nope", 404), ("GET", "nowhere", 404),
                                     ("POST", "", 405), ("DELETE", "item/x", 405)):
            async with http.request(method, viewer.url + path) as response:
                assert response.status == status, path
                assert "default-src 'none'" in response.headers["Content-Security-Policy"]
                assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.unit
def test_word_diffs_of_long_or_unrelated_texts_do_bounded_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Texts that made difflib cubic (up to 20,000 words, only single common words
    between them) reach difflib only in parts of at most EXACT_CELLS, a bounded number
    of cells in all, and the pieces still rebuild both texts (timings: benchmarks/
    viewer_diff.py)."""
    import difflib
    import random

    from iterrefine.tools import worddiff

    cells: list[int] = []

    limit = getattr(worddiff, "EXACT_CELLS", 10_000)

    class Counting(difflib.SequenceMatcher):  # type: ignore[type-arg]
        def __init__(self, isjunk: object = None, a: list[str] = (), b: list[str] = (),
                     autojunk: bool = True) -> None:
            cells.append(len(a) * len(b))
            assert cells[-1] <= limit, f"difflib asked for {cells[-1]} cells"
            super().__init__(isjunk, a, b, autojunk)  # type: ignore[arg-type]

    monkeypatch.setattr(worddiff.difflib, "SequenceMatcher", Counting)
    rng = random.Random(7)

    def text(prefix: str, words: int, every: int) -> str:
        return " ".join(f"{prefix}{rng.randrange(10**9)}" + (" the" if n % every else f" U{n}")
                        for n in range(words // 2))

    for words in (1_000, 8_000, 20_000):
        for every in (words, 25):  # no anchor at all; an anchor every 25 words
            cells.clear()
            before, after = text("a", words, every), text("b", words, every)
            pieces = worddiff.word_diff(before, after)
            assert "".join(t for op, t in pieces if op != "insert") == before
            assert "".join(t for op, t in pieces if op != "delete") == after
            assert sum(cells) <= 4 * words * 100  # linear in the text, not quadratic
