"""The stage graph: topology as data, checked when it is built (no broker needed)."""

from __future__ import annotations

import subprocess
import sys
from typing import Literal

import pytest

from iterrefine.config import PipelineConfig
from iterrefine.consumers import PIPELINE, route
from iterrefine.errors import ConfigError
from iterrefine.graph.context import PipelineContext
from iterrefine.graph.spec import StageGraph, StageSpec, load_object
from iterrefine.item.model import Item, Original, Provenance
from iterrefine.item.records import new_item
from iterrefine.observe.metrics import Metrics
from iterrefine.runtime import InlineHandler, Output, Stage
from iterrefine.runtime.stage import decode_envelope, decode_raw_record


def _keep(ctx: PipelineContext) -> InlineHandler:
    def keep(item: Item) -> list[Output]:
        return [Output("items.dedup", item)]

    return keep


DEDUP = StageSpec(name="dedup", input_topic="items.scored",
                  outputs=("items.dedup", "items.rejected"), waits=False, handler=_keep)


@pytest.mark.unit
def test_the_builtin_graph_yields_the_pipeline_topics_in_order() -> None:
    """Topics come from the stages: inputs in order, then the terminal topics."""
    assert PIPELINE.names == ("score", "route", "refine", "review", "align")
    assert PIPELINE.topics() == ("items.raw", "items.scored", "items.refine", "items.review",
                                 "items.align", "items.curated", "items.rejected", "items.dlq")
    assert PIPELINE.readers("items.refine") == ["refine"]
    assert [s.waits for s in PIPELINE] == [True, False, True, True, True]


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
def test_a_stage_placed_before_score_reads_raw_records_decoded_for_it() -> None:
    """`before = score` with no input_topic: the stage reads items.raw with the raw decoder."""
    placed = StageSpec(name="dedup", outputs=("items.dedup", "items.rejected"), waits=False,
                       handler=_keep)
    graph = PIPELINE.inserted(placed, before="score")
    assert graph.inputs()["dedup"] == "items.raw" and graph.inputs()["score"] == "items.dedup"
    ctx = PipelineContext(PipelineConfig(), {}, Metrics(), Provenance(prompt_version="t"))
    by_name = {stage.name: stage for stage in graph.build(ctx)}
    assert by_name["dedup"].decoder is decode_raw_record
    assert by_name["score"].decoder is decode_envelope  # score now reads envelopes


@pytest.mark.unit
def test_input_topic_and_before_cannot_disagree() -> None:
    """A spec that reads one topic but is placed before a stage reading another is refused."""
    with pytest.raises(ConfigError, match=r"declares input_topic 'items\.scored'.*before "
                                          r"'score'.*drop input_topic"):
        PIPELINE.inserted(DEDUP, before="score")
    agreeing = StageSpec(name="dedup", input_topic="items.raw",
                         outputs=("items.dedup",), waits=False, handler=_keep)
    assert PIPELINE.inserted(agreeing, before="score").inputs()["dedup"] == "items.raw"
    nowhere = StageSpec(name="dedup", outputs=("items.rejected",), waits=False, handler=_keep)
    with pytest.raises(ConfigError, match="says nowhere where it reads"):
        StageGraph([*PIPELINE, nowhere])


@pytest.mark.unit
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


class _AlwaysHigh:
    def quality(self, item: Item) -> Literal["high", "low"]:
        return "high"


def always_high(ctx: PipelineContext) -> _AlwaysHigh:
    """A routing policy factory, referenced as module:attr from config."""
    return _AlwaysHigh()


def _route_ctx(policy: str) -> PipelineContext:
    config = PipelineConfig(routing_policy=policy)
    return PipelineContext(config, {}, Metrics(), Provenance())


@pytest.mark.unit
def test_the_routing_policy_is_chosen_by_name_or_module_attr() -> None:
    """pipeline.routing_policy: `threshold`, or module:attr of a factory; else a clear error."""
    item = new_item(Original(instruction="Q?", input="", output="A."))
    assert isinstance(route.policy_for(_route_ctx("threshold")), route.ThresholdPolicy)
    chosen = route.policy_for(_route_ctx("tests.test_graph:always_high"))
    assert chosen.quality(item) == "high"
    (out,) = route.handler(_route_ctx("tests.test_graph:always_high"))(item)
    assert out.topic == "items.curated"
    with pytest.raises(ConfigError, match=r"unknown routing policy 'nope'.*threshold"):
        route.policy_for(_route_ctx("nope"))
    with pytest.raises(ConfigError, match="not a factory"):
        route.policy_for(_route_ctx("tests.test_graph:DEDUP"))
    with pytest.raises(ConfigError, match="no quality"):
        route.policy_for(_route_ctx("tests.test_graph:_route_ctx"))


def test_worker_rejects_an_unknown_stage_naming_the_graphs() -> None:
    """`iterrefine worker nope` exits 2 and lists the stages it could run."""
    # A child process: the CLI configures logging for the process, which a test must not.
    result = subprocess.run(
        [sys.executable, "-m", "iterrefine.cli", "worker", "nope", "--bootstrap", "127.0.0.1:1",
         "--llm-base-url", "http://127.0.0.1:1/v1", "--strong-model", "s",
         "--backbone-model", "b"],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "score, route, refine, review, align" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.unit
def test_a_stage_entrys_options_reach_its_handler_factory() -> None:
    """`options` of a [[stages]] entry become ctx.options for that stage only."""
    seen: list[object] = []

    def factory(ctx: PipelineContext) -> InlineHandler:
        seen.append(dict(ctx.options))
        return _keep(ctx)

    spec = StageSpec(name="dedup", input_topic="items.scored",
                     outputs=("items.dedup", "items.rejected"), waits=False, handler=factory)
    ctx = _route_ctx("threshold")
    spec.with_options({"compare_input": False}).build(ctx)
    spec.build(ctx)
    assert seen == [{"compare_input": False}, {}]
    assert ctx.options == {}  # the shared context is not changed
