"""``python -m iterrefine.cli``: the same entry point as the ``iterrefine`` script."""

from iterrefine.cli import entry

entry()
