"""The item: what flows through every topic, and how untrusted records become one
(layer 1, above the base modules :mod:`iterrefine.errors`, :mod:`iterrefine.lifecycle`
and :mod:`iterrefine.retry`; no I/O).

:mod:`.model` is the versioned wire struct and its codec; :mod:`.ids` the one id
normalisation; :mod:`.jsonguard` the checks untrusted JSON passes before a full parser
sees it; :mod:`.chat` reads chat-shaped records as Alpaca fields;
:mod:`.selection_state` is the Selection signals an item carries. Imports only the base.
"""
