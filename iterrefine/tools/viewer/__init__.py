"""``iterrefine view``: a local web viewer of an export or of the terminal topics.

Plain server-rendered HTML (no build step, no script): :mod:`._list` renders the list
(filters, text search, pages), :mod:`._pages` an item, :mod:`._server` serves them with
aiohttp on 127.0.0.1. Item text is untrusted and is
escaped everywhere; the pages also forbid scripts by Content-Security-Policy.
"""

from iterrefine.tools.viewer._server import Viewer

__all__ = ["Viewer"]
