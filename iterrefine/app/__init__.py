"""The composition root (layer 10): config → graph → LLM roles → context → stages →
runners (:mod:`.pipeline`), and ``iterrefine run`` built on it (:mod:`.run` with its
preflight, broker choice, stage phase, extra worker processes, summary, pricing and the
meter of progress and the cost cap), the Python API on top of it (:mod:`.api`:
``curate``) and the dataset folder with its card (:mod:`.dataset`). May import every
layer below, the stages included; :mod:`iterrefine.tools` is its peer.
"""
