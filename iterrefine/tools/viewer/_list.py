"""The viewer's list page: filters, text search and pages, fast on 100,000 items.

What a request filters on is computed once per item when the viewer starts
(:class:`ListIndex`): status, rounds, score change, cluster, and the text search
matches (the id, the original and the revised instruction, a dead letter's or rejected
item's reason, case-folded). A request scans those columns, not the items; the matching
positions of the last few queries are kept, so paging through one result set costs one
scan. Each row shows the original instruction beside the revised one, and items made by
the LLM simulator carry the SIMULATED marker (with a banner over the page).

Every piece of item text is escaped (``_pages._e``), like the item page.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from iterrefine.tools.story import Story
from iterrefine.tools.viewer._pages import _e as e
from iterrefine.tools.viewer._pages import _fmt as fmt_score
from iterrefine.tools.viewer._pages import _page as page
from iterrefine.tools.viewer._pages import score_change_kind

PAGE_SIZE = 100
#: Filters of the form (query parameter → label); ``q`` is the text search.
FILTERS = ("status", "rounds", "change", "cluster")
_PREVIEW_CHARS = 160
_CACHED_QUERIES = 16


@dataclass(frozen=True, slots=True)
class _Facts:
    """One item's filter values and search text, computed once."""

    status: str
    outcome: str
    rounds: str
    change: str
    cluster: str
    text: str


def _facts(story: Story) -> _Facts:
    item = story.item
    words = [story.id, story.reason]
    if item is not None:
        words += [item.original.instruction, item.instruction]
    return _Facts(status=story.status, outcome=story.outcome, rounds=str(story.rounds),
                  change=score_change_kind(story),
                  cluster="" if story.cluster is None else str(story.cluster),
                  text="\x00".join(words).casefold())


class ListIndex:
    """The stories as read (an export's curated rows, then rejected, then dead letters; each
    file in input order) with their filter values; answers a query's positions."""

    def __init__(self, stories: Sequence[Story]) -> None:
        self.stories = stories
        self._facts = [_facts(story) for story in stories]
        self.statuses = sorted({f.status for f in self._facts} | {f.outcome for f in self._facts})
        self.rounds = sorted({f.rounds for f in self._facts}, key=int)
        self.clusters = sorted({f.cluster for f in self._facts if f.cluster},
                               key=lambda c: (len(c), c))
        self.simulated = sum(1 for s in stories if s.item is not None
                             and s.item.provenance.simulated)
        self._cache: OrderedDict[tuple[str, ...], list[int]] = OrderedDict()

    def select(self, filters: Mapping[str, str], query: str) -> Sequence[int]:
        """Positions of the stories that pass every given filter and contain ``query``."""
        key = (*(filters.get(name, "") for name in FILTERS), query.casefold().strip())
        if not any(key):
            return range(len(self.stories))
        found = self._cache.get(key)
        if found is None:
            found = self._scan(*key)
            self._cache[key] = found
            if len(self._cache) > _CACHED_QUERIES:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return found

    def _scan(self, status: str, rounds: str, change: str, cluster: str,
              query: str) -> list[int]:
        return [i for i, f in enumerate(self._facts)
                if (not status or status in (f.status, f.outcome))
                and (not rounds or f.rounds == rounds)
                and (not change or f.change == change)
                and (not cluster or f.cluster == cluster)
                and (not query or query in f.text)]


def _select(name: str, label: str, options: Sequence[str], chosen: str) -> str:
    items = ["<option value=''>all</option>"] + [
        f"<option value='{e(o)}'{' selected' if o == chosen else ''}>{e(o)}</option>"
        for o in options]
    return f"<label>{e(label)} <select name='{name}'>{''.join(items)}</select></label>"


def _preview(text: str) -> str:
    return e(text if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "…")


def _row(story: Story, clusters: bool) -> str:
    item = story.item
    sim = (" <span class=sim title='made by the LLM simulator, not a model'>SIMULATED</span>"
           if item is not None and item.provenance.simulated else "")
    if item is None:  # a dead letter: its reason is under its status
        original, revised = "", ""
    else:
        original = _preview(item.original.instruction)
        revised = (_preview(item.instruction) if item.instruction != item.original.instruction
                   else "<span class=same>unchanged</span>")
    cluster = f"<td>{e(story.cluster if story.cluster is not None else '')}</td>"
    reason = f"<br><small>{_preview(story.reason)}</small>" if story.reason else ""
    return (f"<tr><td><a href='/item/{quote(story.id, safe='')}'>{e(story.id)}</a></td>"
            f"<td><span class='tag {e(story.status)}'>{e(story.status)}</span>{sim}"
            f"{reason}</td>"
            f"<td>{story.rounds}</td>"
            f"<td>{fmt_score(story.score_before)} → {fmt_score(story.score_after)}</td>"
            f"{cluster if clusters else ''}"
            f"<td class=text>{original}</td><td class=text>{revised}</td></tr>")


def _nav(query: Mapping[str, str], number: int, pages: int) -> str:
    def link(target: int, label: str) -> str:
        return f"<a href='/?{e(urlencode({**query, 'page': target}))}'>{label}</a>"

    parts = []
    if number > 0:
        parts += [link(0, "« first"), link(number - 1, "← previous")]
    parts.append(f"page {number + 1} of {pages}")
    if number + 1 < pages:
        parts += [link(number + 1, "next →"), link(pages - 1, "last »")]
    return f"<p class=nav>{' '.join(parts)}</p>"


def list_page(index: ListIndex, filters: Mapping[str, str], query: str, number: int,
              source: str) -> str:
    """One page of the stories that match ``filters`` and ``query`` (page ``number``)."""
    chosen = index.select(filters, query)
    pages = max(1, -(-len(chosen) // PAGE_SIZE))
    number = min(max(number, 0), pages - 1)
    start = number * PAGE_SIZE
    clusters = bool(index.clusters)
    rows = [_row(index.stories[i], clusters) for i in chosen[start:start + PAGE_SIZE]]
    form = [f"<label>search <input type=search name=q value='{e(query)}' size=30 "
            "placeholder='id or instruction text'></label>",
            _select("status", "status", index.statuses, filters.get("status", "")),
            _select("rounds", "rounds", index.rounds, filters.get("rounds", "")),
            _select("change", "score change", ["improved", "unchanged", "worse", "unknown"],
                    filters.get("change", ""))]
    if clusters:
        form.append(_select("cluster", "cluster", index.clusters, filters.get("cluster", "")))
    banner = (f"<p class=sim>SIMULATED LLM output (not a model): {index.simulated} of "
              f"{len(index.stories)} items were made by the simulator</p>"
              if index.simulated else "")
    kept = {k: v for k, v in {**filters, "q": query}.items() if v}
    head = "".join(f"<th>{name}</th>" for name in (
        "id", "status", "rounds", "judge score", *(["cluster"] if clusters else []),
        "original instruction", "revised instruction"))
    body = (f"<h1>iterrefine — {len(chosen)} of {len(index.stories)} items</h1>{banner}"
            f"<p>from {e(source)}</p><form method=get>{''.join(form)}"
            "<button type=submit>filter</button></form>"
            f"{_nav(kept, number, pages)}<table id=items><tr>{head}</tr>{''.join(rows)}</table>"
            f"{_nav(kept, number, pages)}")
    return page("iterrefine items", body)
