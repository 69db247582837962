"""The LLM vocabulary (layer 7, above the transport in :mod:`iterrefine.llm`): one
registry entry per task (:mod:`.registry`: template, data keys, parser, schema), the prompt
templates and message builder (:mod:`.prompts`), the parsers of model answers
(:mod:`.parsing`), and the ``ask`` helpers a stage calls (:mod:`.ask`). The simulator sits
above this layer and looks its answers up by task name; nothing here imports it.
"""
