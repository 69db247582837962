"""Data in and out the way data teams hold it.

* :mod:`iterrefine.formats.inputs` — read JSON lines, a JSON array, Parquet, CSV or a
  Hugging Face dataset as raw records for ``items.raw`` (streamed).
* :mod:`iterrefine.formats.chat` — OpenAI ``messages`` / ShareGPT ``conversations``
  records as Alpaca fields.
* :mod:`iterrefine.formats.outputs` — export rows in the ``full``, ``alpaca``,
  ``messages`` or ``sharegpt`` shape, as JSON lines or Parquet.

Nothing is imported here: :mod:`iterrefine.model` imports :mod:`.chat`, and the
readers import the model.
"""
