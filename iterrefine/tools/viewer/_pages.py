"""HTML pages of the viewer: one item side by side, and what every page shares
(the list page is :mod:`._list`).

Every piece of item or model text goes through :func:`html.escape` (the only way
text enters a page is :func:`_e`), so an item holding ``<script>`` shows it as text.
"""

from __future__ import annotations

import html

from iterrefine.item.model import Item
from iterrefine.tools.story import Story
from iterrefine.tools.worddiff import word_diff

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5rem;color:#1d232a;background:#fafafa}
a{color:#0b5cad}h1{font-size:1.3rem}h2{font-size:1.1rem;margin-top:1.6rem}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #d8dde3;padding:.35rem .5rem;vertical-align:top;text-align:left}
th{background:#eef1f4}td.text{white-space:pre-wrap;word-break:break-word;width:50%}
form{margin:0 0 1rem}label{margin-right:1rem}
del{background:#ffd7d5;color:#82071e}ins{background:#ccffd8;color:#055d20;text-decoration:none}
.tag{display:inline-block;padding:0 .45rem;border-radius:.6rem;background:#e6e9ee;
margin-right:.3rem}
.refined,.high{background:#d2f4dd}.rejected,.dlq,.dropped{background:#fde2e1}
.unrefined{background:#fff1c2}.win{color:#055d20;font-weight:600}
.loss{color:#9a6700;font-weight:600}
.sim{color:#82071e;font-weight:600}
.kv th{width:11rem}.kv td.text{width:auto}
#items td.text{width:38%}#items td:first-child{white-space:nowrap}
.same{color:#6a737d;font-style:italic}.nav{margin:.6rem 0}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body>{body}</body></html>")


def diff_html(before: str, after: str) -> str:
    """``before`` → ``after`` as escaped text with <del>/<ins> around changed words."""
    out = []
    for op, piece in word_diff(before, after):
        text = _e(piece)
        out.append(text if op == "equal" else f"<{op[:3]}>{text}</{op[:3]}>")
    return "".join(out)


def score_change_kind(story: Story) -> str:
    change = story.score_change
    if change is None:
        return "unknown"
    return "improved" if change > 0 else "worse" if change < 0 else "unchanged"


def _fmt(score: float | None) -> str:
    return "–" if score is None else f"{score:.2f}"


def _side_by_side(item: Item) -> str:
    original = item.original
    rows = []
    for name, before, after in (("instruction", original.instruction, item.instruction),
                                ("input", original.input, item.input),
                                ("output", original.output, item.output)):
        rows.append(f"<tr><th>{name}</th><td class=text>{_e(before)}</td>"
                    f"<td class=text>{_e(after)}</td></tr>")
        if before != after:
            rows.append(f"<tr><th>{name} diff</th><td class=text colspan=2>"
                        f"{diff_html(before, after)}</td></tr>")
    if original.system:
        rows.append(f"<tr><th>system</th><td class=text colspan=2>{_e(original.system)}</td></tr>")
    return ("<table id=side-by-side><tr><th></th><th>original</th><th>refined</th></tr>"
            f"{''.join(rows)}</table>")


def _rounds(item: Item) -> str:
    parts = []
    if item.evaluation is not None:
        ev = item.evaluation
        suggestions = "".join(f"<li>{_e(s)}</li>" for s in ev.suggestions)
        parts.append(
            "<h2>evaluate: the backbone answers the original</h2><table class=kv>"
            f"<tr><th>backbone answer</th><td class=text>{_e(ev.backbone_answer)}</td></tr>"
            f"<tr><th>score</th><td>{ev.score}/10</td></tr>"
            f"<tr><th>evaluation</th><td class=text>{_e(ev.text)}<ul>{suggestions}</ul></td></tr>"
            "</table>")
    for rnd in item.rounds:
        won = rnd.winner in ("B", "Tie")
        verdict = (f"<span class={'win' if won else 'loss'}>winner {_e(rnd.winner)}"
                   f"{' — revision accepted' if won else ' — original kept, try again'}</span>")
        feedback = (f"<tr><th>feedback given</th><td class=text>{_e(rnd.feedback)}</td></tr>"
                    if rnd.feedback else "")
        parts.append(
            f"<h2 id=round-{rnd.number}>round {rnd.number}: refine → review</h2>"
            f"<table class=kv>{feedback}"
            "<tr><th>revised instruction</th><td class=text>"
            f"{diff_html(item.original.instruction, rnd.instruction)}</td></tr>"
            "<tr><th>revised input</th><td class=text>"
            f"{diff_html(item.original.input, rnd.input)}</td></tr>"
            f"<tr><th>backbone answer</th><td class=text>{_e(rnd.backbone_answer)}</td></tr>"
            f"<tr><th>verdict</th><td>{verdict}</td></tr>"
            f"<tr><th>judge's explanation</th><td class=text>{_e(rnd.explanation)}</td></tr>"
            "</table>")
    return "".join(parts)


def item_page(story: Story) -> str:
    if story.item is None:
        row = story.row
        original = row.get("original", row.get("original_base64", ""))
        body = (f"<p><a href='/'>← all items</a></p><h1>{_e(story.id)} — dead letter</h1>"
                f"<table><tr><th>reason</th><td>{_e(row.get('reason', ''))}</td></tr>"
                f"<tr><th>message</th><td class=text>{_e(row.get('message', ''))}</td></tr>"
                f"<tr><th>original</th><td class=text>{_e(original)}</td></tr></table>")
        return _page(f"{story.id} — iterrefine", body)
    item = story.item
    facts = [f"<span class='tag {_e(item.status)}'>{_e(item.status)}</span>",
             f"<span class=tag>{len(item.rounds)} rounds</span>",
             f"<span class=tag>judge score {_fmt(story.score_before)} → "
             f"{_fmt(story.score_after)}</span>"]
    if story.cluster is not None:
        facts.append(f"<span class=tag>cluster {_e(story.cluster)}</span>")
    if item.provenance.simulated:
        facts.append("<span class=sim>SIMULATED LLM output (not a model)</span>")
    judgement = ""
    if item.judgement is not None:
        judgement = (f"<p><b>quality judge</b> ({_e(item.judgement.verdict)}): "
                     f"{_e(item.judgement.justification)}</p>")
    reason = f"<p><b>reason</b>: {_e(story.reason)}</p>" if story.reason else ""
    body = (f"<p><a href='/'>← all items</a></p><h1>{_e(item.id)}</h1>"
            f"<p>{''.join(facts)}</p>{reason}{judgement}{_side_by_side(item)}{_rounds(item)}")
    return _page(f"{item.id} — iterrefine", body)
