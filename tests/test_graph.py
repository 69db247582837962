"""The stage graph: topology as data, checked when it is built (no broker needed)."""

from __future__ import annotations

import pytest

from iterrefine.consumers import PIPELINE
from iterrefine.context import PipelineContext
from iterrefine.errors import ConfigError
from iterrefine.graph import StageGraph, StageSpec, load_object
from iterrefine.model import Item
from iterrefine.runtime import InlineHandler, Output, Stage


def _keep(ctx: PipelineContext) -> InlineHandler:
    def keep(item: Item) -> list[Output]:
        return [Output("items.dedup", item)]

    return keep


DEDUP = StageSpec(name="dedup", input_topic="items.scored",
                  outputs=("items.dedup", "items.rejected"), waits=False, handler=_keep)


def test_the_builtin_graph_yields_the_pipeline_topics_in_order() -> None:
    """Topics come from the stages: inputs in order, then the terminal topics."""
    assert PIPELINE.names == ("score", "route", "refine", "review", "align")
    assert PIPELINE.topics() == ("items.raw", "items.scored", "items.refine", "items.review",
                                 "items.align", "items.curated", "items.rejected", "items.dlq")
    assert PIPELINE.readers("items.refine") == ["refine"]
    assert [s.waits for s in PIPELINE] == [True, False, True, True, True]


def test_an_output_no_stage_reads_fails_when_the_graph_is_built() -> None:
    """A declared output that is neither read nor terminal is a start-up error naming it."""
    lost = StageSpec(name="lost", input_topic="items.scored", outputs=("items.nowhere",),
                     waits=False, handler=_keep)
    with pytest.raises(ConfigError, match=r"lost.*items\.nowhere.*no stage"):
        StageGraph([*PIPELINE, lost])
    with pytest.raises(ConfigError, match="terminal topic"):
        StageGraph([StageSpec(name="x", input_topic="items.curated", outputs=("items.dlq",),
                              waits=False, handler=_keep)])
    with pytest.raises(ConfigError, match="two stages are named 'route'"):
        StageGraph([*PIPELINE, PIPELINE["route"]])
    with pytest.raises(ConfigError, match="declares no output topics"):
        Stage("x", "items.raw", lambda item: [], outputs=())


def test_inserting_a_stage_before_route_rewires_route_to_its_topic() -> None:
    """`before = route`: the new stage reads items.scored, route reads items.dedup."""
    graph = PIPELINE.inserted(DEDUP, before="route")
    assert graph.names == ("score", "dedup", "route", "refine", "review", "align")
    assert graph.inputs()["dedup"] == "items.scored"
    assert graph.inputs()["route"] == "items.dedup"
    assert graph.topics()[:3] == ("items.raw", "items.scored", "items.dedup")
    assert PIPELINE.inputs()["route"] == "items.scored"  # the built-in graph is unchanged
    without_own = StageSpec(name="dedup", input_topic="items.scored",
                            outputs=("items.rejected",), waits=False, handler=_keep)
    with pytest.raises(ConfigError, match=r"declare 'items\.dedup'"):
        PIPELINE.inserted(without_own, before="route")
    with pytest.raises(ConfigError, match="unknown stage 'nope'"):
        PIPELINE.inserted(DEDUP, before="nope")


def test_stage_selection_and_references_fail_with_the_fix() -> None:
    """Unknown stage names list the graph's; bad module:attr references say what is wrong."""
    assert [s.name for s in PIPELINE.select(["all"])] == list(PIPELINE.names)
    assert [s.name for s in PIPELINE.select(["route", "score", "route"])] == ["route", "score"]
    with pytest.raises(ConfigError, match="score, route, refine, review, align"):
        PIPELINE.select(["sccore"])
    assert load_object("iterrefine.consumers:PIPELINE", what="stage") is PIPELINE
    with pytest.raises(ConfigError, match="module:attribute"):
        load_object("iterrefine.consumers.PIPELINE", what="stage")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_x'"):
        load_object("no_such_module_x:SPEC", what="stage")
    with pytest.raises(ConfigError, match="has no 'NOPE'"):
        load_object("iterrefine.consumers:NOPE", what="stage")
