"""Read-side tools (layer 10, peer of :mod:`iterrefine.app`): ``status``, ``replay``,
``report``, one item's story for ``show`` and the web ``viewer``, with the word diff they
share. They read topics and exports; they never run stages. May import every layer below.
"""
