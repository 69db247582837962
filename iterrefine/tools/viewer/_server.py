"""The viewer's HTTP server: aiohttp on 127.0.0.1, pages rendered per request.

Every response carries the security headers, aiohttp's own 404 and 405 pages included
(they are added as each response is prepared). An item page is rendered in a worker
thread: its word diffs are bounded (:mod:`iterrefine.tools.worddiff`), and the list
page stays answerable meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType

from aiohttp import web

from iterrefine.tools.story import Story
from iterrefine.tools.viewer._list import FILTERS, ListIndex, list_page
from iterrefine.tools.viewer._pages import item_page

#: Defence in depth behind escaping: the pages need no script, no remote resource.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Viewer:
    """Serves ``stories`` read once at start; ``async with Viewer(...) as v: v.url``."""

    def __init__(self, stories: Iterable[Story], *, source: str, port: int = 0,
                 host: str = "127.0.0.1") -> None:
        self.stories = list(stories)
        self._by_id = {story.id: story for story in self.stories}
        self._index = ListIndex(self.stories)  # the list page's filters, once per item
        self._source = source
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.on_response_prepare.append(_secure)
        app.router.add_get("/", self._list)
        # Any id the list links to: its default pattern ([^{}/]+) left ids with { } or /
        # listed but unreachable.
        app.router.add_get("/item/{id:.+}", self._item)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self._host}:{port}/"

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Viewer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    def _html(self, text: str, status: int = 200) -> web.Response:
        return web.Response(text=text, content_type="text/html", charset="utf-8",
                            status=status)

    async def _list(self, request: web.Request) -> web.Response:
        query = request.query
        filters = {key: query.get(key, "") for key in FILTERS}
        try:
            page = max(0, int(query.get("page", "0")))
        except ValueError:
            page = 0
        return self._html(list_page(self._index, filters, query.get("q", ""), page,
                                    self._source))

    async def _item(self, request: web.Request) -> web.Response:
        story = self._by_id.get(request.match_info["id"])
        if story is None:
            return self._html("<!doctype html><p>no such item. <a href='/'>all items</a></p>",
                              status=404)
        return self._html(await asyncio.to_thread(item_page, story))


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    """The security headers on every response, whoever made it."""
    response.headers.update(_HEADERS)
