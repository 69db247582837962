"""The composition root (layer 10): config → graph → LLM roles → context → stages →
runners (:mod:`.pipeline`), and ``iterrefine run`` built on it (:mod:`.run` with its
preflight, broker choice, stage phase, extra worker processes, summary and pricing).
May import every layer below, the stages included; :mod:`iterrefine.tools` is its peer.
"""
