"""The stages' smaller rules, each written out: what a request carries, what a failure
records, what a metric counts, what a misconfigured routing policy says.

Written against the mutants ``benchmarks/mutation.py`` found surviving: each test pins
a rule that a one-token change to ``consumers/`` broke without any test noticing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import httpx2
import pytest
from structlog.testing import capture_logs

from iterrefine.config import LLMRoleConfig
from iterrefine.consumers import PIPELINE, STAGE_NAMES, build_stages
from iterrefine.consumers.refine import feedback_set
from iterrefine.consumers.route import ThresholdPolicy
from iterrefine.errors import ConfigError
from iterrefine.item.model import Evaluation, Item, Judgement, Round, Scores, Selection
from iterrefine.llm import LLMClient
from iterrefine.selection.centroids import Placement
from iterrefine.selection.difficulty import DifficultyScorer
from iterrefine.selection.embeddings import Embedder
from iterrefine.selection.selector import Selector
from iterrefine.testing import Reply, StageKit, make_item, only

from .scripted_answers import EVALUATION, HIGH, REVISION

pytestmark = pytest.mark.unit

SPECS = {spec.name: spec for spec in PIPELINE}

ITEM = dict(instruction="Name the largest planet.", input="Planets: Mars, Jupiter, Venus.",
            output="Jupiter.")
SCORES = Scores(correctness=8, completeness=7, clarity=7, compliance=7, reasoning=6)


def judged(verdict: str, scores: Scores | None = SCORES) -> Item:
    return make_item(**ITEM, judgement=Judgement(
        usable=True, reason="", scores=scores, verdict=verdict,  # type: ignore[arg-type]  # a plain str in the tests
        justification=""))


def sample(kit: StageKit, metric: str, labels: dict[str, str]) -> float:
    return kit.metrics.registry.get_sample_value(metric, labels) or 0.0


# ------------------------------------------------------------------ score

async def test_score_asks_about_the_item_with_its_limit_and_counts_the_mean() -> None:
    """Score: the request holds the item's fields and the score limit; the mean is observed."""
    async with StageKit({"score": HIGH}, pipeline={"max_tokens": {"score": 1234}}) as kit:
        out = only(await kit.handle("score", make_item(**ITEM)))
        (request,) = kit.requests
        assert request.data == ITEM and request.max_tokens == 1234
        assert sample(kit, "iterrefine_quality_score_sum", {"stage": "score"}) == 9.0
    assert (out.topic, out.outcome_label) == ("items.scored", "scored")


async def test_score_asks_again_as_often_as_configured() -> None:
    """An unreadable judgement is asked again parse_retries times before it is an error."""
    async with StageKit({"score": "I like it."}, pipeline={"parse_retries": 1}) as kit:
        with pytest.raises(Exception, match="score"):
            await kit.handle("score", make_item(**ITEM))
        assert kit.script.count("score") == 2


# ------------------------------------------------------------------ route

@pytest.mark.parametrize(("item", "quality"), [
    (judged("high", Scores(correctness=7, completeness=7, clarity=7, compliance=7,
                           reasoning=7)), "high"),  # the bar itself is high
    (judged("high", None), "low"),  # no scores: never high
    (make_item(**ITEM), "low"),  # never judged
    (judged("low"), "low"),
])
def test_threshold_policy_at_its_bar(item: Item, quality: str) -> None:
    """High iff the verdict is high and the mean reaches the bar (inclusive)."""
    assert ThresholdPolicy(7.0).quality(item) == quality


async def test_route_marks_high_items_and_counts_cluster_quota_decisions() -> None:
    """A high item is curated with status high; cluster_quota counts its decisions."""
    async with StageKit(pipeline={"routing_policy": "cluster_quota"}) as kit:
        out = only(await kit.handle("route", judged("high")))
        assert (out.topic, out.item.status, out.item.quality) == ("items.curated", "high",
                                                                  "high")
        assert sample(kit, "iterrefine_selection_items_total",
                      {"cluster": "warmup", "quality": "high"}) == 1.0


#: Not a factory: a routing policy named by it is a configuration error.
NOT_A_FACTORY = 42


def no_quality_method(ctx: object) -> object:
    return object()


@pytest.mark.parametrize(("name", "message"), [
    ("best", "unknown routing policy 'best': use one of threshold, cluster_quota, or "
             "module:attr of a policy factory"),
    ("no_such_module_for_iterrefine:make", "cannot import module "
     "'no_such_module_for_iterrefine' of routing policy"),
    ("tests.test_stage_details:NOT_A_FACTORY", "routing policy "
     "'tests.test_stage_details:NOT_A_FACTORY' is a int, not a factory (PipelineContext) -> "
     "RoutingPolicy"),
    ("tests.test_stage_details:no_quality_method", "which has no quality(item) method"),
])
async def test_a_wrong_routing_policy_is_a_clear_config_error(name: str, message: str) -> None:
    """An unknown name, a missing module, a non-factory, a policy without quality(): said so."""
    async with StageKit(pipeline={"routing_policy": name}) as kit:
        with pytest.raises(ConfigError) as raised:
            kit.stage("route")
    assert message in str(raised.value)


async def test_the_built_in_graph_builds_every_stage() -> None:
    """build_stages gives the five stages of the paper in order, or the ones named."""
    async with StageKit() as kit:
        names = [stage.name for stage in build_stages(kit.ctx)]
        some = [stage.name for stage in build_stages(kit.ctx, ["review", "route"])]
    assert names == list(STAGE_NAMES) == ["score", "route", "refine", "review", "align"]
    assert some == ["review", "route"]


# ------------------------------------------------------------------ refine

def lost_round(number: int, explanation: str) -> Round:
    return Round(number=number, instruction=f"take {number}", input="", feedback=None,
                 winner="A", explanation=explanation)


def test_feedback_set_bounds_at_their_edges() -> None:
    """No entries allowed: none; a text exactly the budget fits whole; a budget of 0 or 1."""
    item = make_item(rounds=(lost_round(1, "aaaa"), lost_round(2, "bbbb")))
    assert feedback_set(item, max_entries=0, max_chars=100) == []
    assert feedback_set(item, max_entries=5, max_chars=8) == ["aaaa", "bbbb"]
    assert feedback_set(item, max_entries=5, max_chars=4) == ["bbbb"]
    assert feedback_set(item, max_entries=5, max_chars=1) == ["b"]
    assert feedback_set(item, max_entries=5, max_chars=0) == []


async def test_evaluation_is_kept_whole_and_asked_again_as_configured() -> None:
    """Evaluate: score, text and suggestions recorded; re-asks of the backbone and the
    grade follow parse_retries."""
    async with StageKit({"answer": "Jupiter.", "evaluate": EVALUATION, "refine": REVISION}
                        ) as kit:
        out = only(await kit.handle("refine", make_item(**ITEM, quality="low")))
        (request,) = kit.script.of("refine")
    assert out.item.evaluation == Evaluation(backbone_answer="Jupiter.", score=5,
                                             text="partial.",
                                             suggestions=("Be specific.", "Add units."))
    assert request["evaluation"] == ("Score: 5\n\nEvaluation: partial.\n\nSuggestions:\n"
                                     "1. Be specific.\n2. Add units.")
    for task in ("answer", "evaluate"):
        answers = {"answer": "Jupiter.", "evaluate": EVALUATION, task: Reply("")}
        async with StageKit(answers, pipeline={"parse_retries": 1}) as kit:
            lost = only(await kit.handle("refine", make_item(**ITEM, quality="low")))
            assert kit.script.count(task) == 2, task
        assert lost.item.rounds[-1].revision_failed


async def test_an_unreadable_rewrite_loses_the_round_with_what_it_had() -> None:
    """The failed round records the current text, the feedback and why; the item is
    requeued with that explanation."""
    item = make_item(**ITEM, quality="low", round=1, rounds=(lost_round(1, "too vague"),),
                     feedback="too vague", original_answer="Jupiter.",
                     evaluation=Evaluation(backbone_answer="Jupiter.", score=5, text="ok"))
    async with StageKit({"refine": "no idea"}, pipeline={"parse_retries": 0}) as kit:
        out = only(await kit.handle("refine", item))
    failed = out.item.rounds[-1]
    assert failed == Round(
        number=2, instruction=ITEM["instruction"], input=ITEM["input"], feedback="too vague",
        winner="none", revision_failed=True, feedback_set=("too vague",),
        explanation=failed.explanation)
    assert failed.explanation.startswith("the refine answer could not be read")
    assert (out.topic, out.item.feedback) == ("items.refine", failed.explanation)


async def test_a_revision_records_the_feedback_it_answers() -> None:
    """A readable rewrite's round carries the reviewer feedback the item had."""
    item = make_item(**ITEM, quality="low", round=1, rounds=(lost_round(1, "too vague"),),
                     feedback="too vague", original_answer="Jupiter.",
                     evaluation=Evaluation(backbone_answer="Jupiter.", score=5, text="ok"))
    async with StageKit({"refine": REVISION}) as kit:
        out = only(await kit.handle("refine", item))
    assert out.item.rounds[-1].feedback == "too vague"
    assert (out.topic, out.outcome_label) == ("items.review", "review")


# ------------------------------------------------------------------ review

def in_review(**changes: object) -> Item:
    current = Round(number=1, instruction="Name the largest planet of the solar system.",
                    input=ITEM["input"], feedback=None)
    return make_item(**ITEM, quality="low", original_answer="Jupiter.", round=1,
                     rounds=(current,)).with_changes(**changes)


async def test_an_unreadable_answer_to_the_revision_loses_the_round_unjudged() -> None:
    """The backbone's answer to the revision cut off twice: no review asked, the round is
    lost with no answer recorded."""
    async with StageKit({"answer": Reply("Jupi", "length")}, pipeline={"parse_retries": 1}
                        ) as kit:
        out = only(await kit.handle("review", in_review()))
        assert kit.script.count("review") == 0
    last = out.item.rounds[-1]
    assert (last.winner, last.backbone_answer, out.topic) == ("none", "", "items.refine")
    async with StageKit({"answer": ""}, pipeline={"parse_retries": 1}) as kit:
        await kit.handle("review", in_review())
        assert kit.script.count("answer") == 2  # asked again once, as configured


async def test_review_without_an_original_answer_shows_side_a_none() -> None:
    """An item that never had the backbone's answer (replayed) shows A with no answer."""
    async with StageKit({"answer": "Jupiter is largest.", "review": "Winner: B\nExplanation: x"}
                        ) as kit:
        await kit.handle("review", in_review(original_answer=None))
        (request,) = kit.script.of("review")
    assert request["A"]["answer"] == ""


# ------------------------------------------------------------------ align

async def test_align_asks_with_both_versions_and_rescores_the_result() -> None:
    """Align: the request holds original and revision; the re-score asks about the aligned
    item with the score limit and counts its mean under stage "align"."""
    item = in_review().with_changes(instruction="Name the largest planet of the solar system.",
                                    input="Planets: Jupiter.", converged=True)
    async with StageKit({"align": "Output:\nJupiter, the largest planet.", "score": HIGH},
                        pipeline={"max_tokens": {"score": 1111}}) as kit:
        out = only(await kit.handle("align", item))
        aligned, rescored = kit.script.of("align")[0], kit.script.of("score")[0]
        assert sample(kit, "iterrefine_quality_score_sum", {"stage": "align"}) == 9.0
    assert aligned.data == {
        "original_instruction": ITEM["instruction"], "original_input": ITEM["input"],
        "original_output": ITEM["output"], "revised_instruction": item.instruction,
        "revised_input": "Planets: Jupiter."}
    assert rescored.data == {"instruction": item.instruction, "input": "Planets: Jupiter.",
                             "output": "Jupiter, the largest planet."}
    assert rescored.max_tokens == 1111
    assert (out.item.status, out.item.output_aligned) == ("refined", True)


async def test_an_unreadable_rescore_is_counted_and_logged() -> None:
    """The re-score unreadable after its re-asks: counted, logged with the item, no score."""
    # As review hands it over: the winning revision is the item's instruction.
    item = in_review(converged=True, instruction=in_review().rounds[-1].instruction)
    with capture_logs() as logs:
        async with StageKit({"align": "Output:\nJupiter.", "score": "I like it."},
                            pipeline={"parse_retries": 1}) as kit:
            out = only(await kit.handle("align", item))
            assert kit.script.count("score") == 2
            assert sample(kit, "iterrefine_rescore_failures_total", {}) == 1.0
    failures = [entry for entry in logs if entry["event"] == "rescore_failed"]
    assert len(failures) == 1 and failures[0]["item_id"] == item.id
    assert "score" in failures[0]["error"]
    assert out.item.final_judgement is None


async def test_an_unreadable_alignment_of_a_kept_revision_gives_both_reasons() -> None:
    """Exhausted and then unreadable: the original output, not aligned, both reasons."""
    exhausted = in_review(converged=False, status_reason="exhausted: no revision won",
                          instruction=in_review().rounds[-1].instruction)
    async with StageKit({"align": "", "score": HIGH}, pipeline={"parse_retries": 1}) as kit:
        out = only(await kit.handle("align", exhausted))
        assert kit.script.count("align") == 2  # asked again once, as configured
    assert (out.item.output, out.item.output_aligned, out.item.status) == (
        ITEM["output"], False, "refined")
    first, second = out.item.status_reason.split("; ", 1)
    assert first == "exhausted: no revision won"
    assert second.startswith("align_unparseable: original output kept (")


class OneCluster:
    """The shared centroid model as the selector sees it: every vector in cluster 5 of
    model version 2 (the Kafka-backed model is tested in test_selection_shared)."""

    def __init__(self) -> None:
        self.observed = 0

    def place(self, vector: object) -> Placement:
        return Placement(5, 2, None, 0.75)

    async def observe(self, vector: object, key: tuple[int, float] | None = None) -> None:
        self.observed += 1


def selection_endpoint(request: httpx2.Request) -> httpx2.Response:
    """/v1/completions with echoed logprobs, and /v1/embeddings with one vector."""
    if request.url.path.endswith("/embeddings"):
        return httpx2.Response(200, json={"data": [{"embedding": [0.5, 0.25, 1.0]}]})
    return httpx2.Response(200, json={
        "choices": [{"logprobs": {"token_logprobs": [None, -1.0, -2.0],
                                  "text_offset": [0, 1, 2]}}],
        "usage": {"prompt_tokens": 3}})


async def test_score_gathers_difficulty_and_cluster_for_the_items_it_keeps() -> None:
    """With a selector (cluster_quota), a kept item leaves score with its difficulty and
    cluster; a rejected one is never sent to the selection endpoints."""
    role = LLMRoleConfig(base_url="http://selection.invalid/v1", model="small", max_retries=0)
    centroids = OneCluster()
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx2.AsyncClient(transport=httpx2.MockTransport(selection_endpoint)))
        llm = await stack.enter_async_context(LLMClient("selection", role, http_client=http))
        selector = Selector(DifficultyScorer(llm, "instruction_ppl", "small"),
                            Embedder(llm, "small"), centroids)
        kit = await stack.enter_async_context(StageKit({"score": HIGH}))
        score = SPECS["score"].handler(dataclasses.replace(kit.ctx, selector=selector))
        (out,) = await score(make_item(**ITEM))
        kit.script.answers["score"] = "Usable: no\nReason: off topic\nVerdict: low"
        (rejected,) = await score(make_item(**ITEM))
    # One pooled vector from the endpoint: its pooling is the server's, recorded so.
    assert out.item.selection == Selection(cluster=5, model_version=2, embedding_model="small",
                                           mode="online", pooling="server",
                                           normalization="server", stream_high_share=0.75)
    assert out.partition_by == 5  # the cluster's items go to one route worker
    assert out.item.difficulty is not None and out.item.difficulty.value == pytest.approx(
        math.exp(1.5))
    assert (rejected.topic, rejected.item.selection, centroids.observed) == (
        "items.rejected", None, 1)
