"""The stage API users write against (layer 9): :class:`.spec.StageSpec` and
:class:`.spec.StageGraph` (the topology as data) and :class:`.context.PipelineContext`
(what a handler gets: LLM roles, policy, metrics). The built-in stages in
:mod:`iterrefine.consumers` sit on top of it. Imports every layer below it.
"""
