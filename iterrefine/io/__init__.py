"""Data in and out (layer 8): input files as raw records (:mod:`.inputs`), ingest into
``items.raw`` with the duplicate-id policy (:mod:`.ingest`, :mod:`.duplicates`), following
the terminal topics (:mod:`.watch`), and export as files in the shape a trainer reads
(:mod:`.export`, :mod:`.stream_export`, :mod:`.outputs`). Imports the layers up to
:mod:`iterrefine.runtime`; never the LLM layers, the graph or the app.
"""
