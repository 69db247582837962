"""The paper's selection mechanisms: difficulty, embeddings, quota, exact procedure, task filter."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx2
import msgspec
import numpy as np
import pytest

from iterrefine.config import LLMRoleConfig, SelectionConfig, load_config
from iterrefine.errors import ConfigError, LLMError
from iterrefine.item.model import Difficulty, Judgement, Selection
from iterrefine.llm import LLMClient
from iterrefine.selection import (
    Assigner,
    ClusterQuota,
    DifficultyScorer,
    Embedder,
    Trainer,
    alpaca_prompt,
    exact_quota,
    perplexity,
    pooled_vector,
)
from iterrefine.selection.centroids import Placement
from iterrefine.selection.difficulty import prompt_logprobs
from iterrefine.sim import SimConfig, SimServer
from iterrefine.sim._vectors import embedding, planted_cluster
from iterrefine.tasks.parsing import SCHEMAS, parse_score
from iterrefine.testing import StageKit, make_item, only

from .scripted_answers import HIGH

pytestmark = pytest.mark.unit

SCORE_TEXT = """Usable: yes
Reason: fine.
Correctness: 8
Completeness: 7
Clarity: 9
Compliance: 8
Reasoning: 6
Involves reasoning: no
Verdict: high
Justification: good."""


def test_score_parser_reads_the_task_filter_apart_from_the_reasoning_score() -> None:
    """``Involves reasoning: no`` is the filter; ``Reasoning: 6`` stays the dimension score."""
    answer = parse_score(SCORE_TEXT)
    assert answer.involves_reasoning is False
    assert answer.reasoning == 6
    unsaid = SCORE_TEXT.replace("Involves reasoning: no\n", "")
    assert parse_score(unsaid).involves_reasoning is None


def test_score_schema_and_json_answer_carry_the_task_filter() -> None:
    """The structured-output schema requires ``involves_reasoning`` and the JSON form is read."""
    assert SCHEMAS["score"]["properties"]["involves_reasoning"] == {"type": "boolean"}
    assert "involves_reasoning" in SCHEMAS["score"]["required"]
    obj = {"usable": True, "reason": "r", "correctness": 8, "completeness": 8, "clarity": 8,
           "compliance": 8, "reasoning": 8, "verdict": "low", "justification": "j",
           "involves_reasoning": True}
    assert parse_score(json.dumps(obj)).involves_reasoning is True


def test_selection_config_rejects_a_warmup_smaller_than_k() -> None:
    """k-means needs at least k vectors to start: the config says so."""
    with pytest.raises(ConfigError, match="warmup"):
        SelectionConfig(k=10, warmup=5)


def _completion(values: list[float | None], offsets: list[int], prompt_tokens: int) -> bytes:
    return json.dumps({"choices": [{"logprobs": {"token_logprobs": values,
                                                 "text_offset": offsets}}],
                       "usage": {"prompt_tokens": prompt_tokens}}).encode()


def test_prompt_logprobs_drop_the_generated_token_and_perplexity_skips_the_first() -> None:
    """Only echoed prompt tokens count; the first token's null logprob is skipped."""
    body = _completion([None, -1.0, -3.0, -9.0], [0, 2, 5, 9], prompt_tokens=3)
    values, offsets = prompt_logprobs(body, "ab cd efg")
    assert values == [None, -1.0, -3.0] and offsets == [0, 2, 5]
    assert perplexity(values) == pytest.approx(np.exp(2.0))


def test_a_completion_without_logprobs_is_a_clear_error() -> None:
    """A server that ignores echo/logprobs fails the item with a message saying so."""
    with pytest.raises(LLMError, match="echo"):
        prompt_logprobs(b'{"choices": [{"text": "x"}]}', "x")


def test_pooled_vector_mean_pools_per_token_vectors_and_reads_base64() -> None:
    """llama.cpp's per-token answer is mean-pooled; a base64 float32 answer is decoded."""
    per_token = json.dumps({"data": [{"embedding": [[1.0, 3.0], [3.0, 5.0]]}]}).encode()
    assert pooled_vector(per_token).tolist() == [2.0, 4.0]
    packed = base64.b64encode(np.array([0.5, -1.0], dtype=np.float32).tobytes()).decode()
    assert pooled_vector(json.dumps({"data": [{"embedding": packed}]}).encode()).tolist() == [
        0.5, -1.0]
    with pytest.raises(LLMError):
        pooled_vector(b'{"data": []}')


def _role(sim: SimServer, name: str) -> LLMRoleConfig:
    return LLMRoleConfig(base_url=sim.base_url, model=f"sim-{name}", max_retries=0)


@pytest.mark.parametrize("per_token", [False, True])
async def test_embedder_gets_the_planted_vector_through_the_openai_client(per_token: bool) -> None:
    """Through the real client, the simulator's vector (pooled or per token) comes back."""
    config = SimConfig(embedding_per_token=per_token)
    async with SimServer(config, port=0) as sim, LLMClient("embedding", _role(sim, "e")) as llm:
        vector = await Embedder(llm, "sim-e").embed("Why is the sky blue?", "")
    expected = embedding(alpaca_prompt("Why is the sky blue?", ""), config)
    assert vector.shape == (config.embedding_dim,)
    assert np.allclose(vector, expected, atol=1e-5)


@pytest.mark.parametrize("metric", ["instruction_ppl", "ifd"])
async def test_difficulty_from_the_simulators_echoed_logprobs(metric: str) -> None:
    """Both metrics come out finite, positive and deterministic, named on the item."""
    async with SimServer(SimConfig(), port=0) as sim, LLMClient("d", _role(sim, "d")) as llm:
        scorer = DifficultyScorer(llm, metric, "sim-d")  # type: ignore[arg-type]
        first = await scorer.score("Explain why ice floats.", "", "Ice is less dense than water.")
        again = await scorer.score("Explain why ice floats.", "", "Ice is less dense than water.")
        requests = sim.stats.by_task["completions"]
    assert first == again and first.metric == metric and first.model == "sim-d"
    assert 0.0 < first.value < 1e6
    assert requests == (2 if metric == "instruction_ppl" else 4)


def test_quota_holds_every_clusters_high_share_at_k_ratio() -> None:
    """Per cluster the running high share ends within 2% of k_ratio, ranking by the key."""
    rng = np.random.default_rng(0)
    quota = ClusterQuota(0.8, window=500)
    highs_by_level = {1: 0, 2: 0}
    for i in range(6000):
        level = 2 if rng.random() < 0.6 else 1
        decision = quota.decide(i % 3, (level, float(rng.random())))
        highs_by_level[level] += decision.high
    for seen, high in quota.sizes().values():
        assert abs(high / seen - 0.8) < 0.02
    assert highs_by_level[2] > 3 * highs_by_level[1]  # judge-high items go first


def test_exact_quota_is_the_papers_ranking() -> None:
    """round(k_ratio·n) per cluster: level 2 first, then by difficulty descending."""
    clusters = [0, 0, 0, 0, 0, 1, 1]
    levels = [1, 2, 2, 1, 1, 1, 2]
    difficulty = [9.0, 1.0, 2.0, 5.0, 3.0, 1.0, 0.5]
    assert exact_quota(clusters, levels, difficulty, 0.6) == [
        True, True, True, False, False, False, True]


def test_trainer_versions_and_assigners_agree_on_ids() -> None:
    """Warm-up fit is v1, partial_fit proposals v2…; two assigners of a version agree."""
    config = SelectionConfig(k=4, warmup=40, batch_size=20)
    sim = SimConfig(embedding_clusters=4, embedding_dim=16)
    vectors = [embedding(f"text {i}", sim).astype(np.float32) for i in range(100)]
    trainer = Trainer(config, embedding_model="m", writer="w")
    model = None
    for vector in vectors:
        trainer.collect(vector)
        proposal = trainer.propose(model)
        if proposal is not None:
            trainer.accepted(proposal, proposal)
            model = proposal
    assert model is not None and model.version == 4 and model.trained_on == 100
    one, two = Assigner(model), Assigner(msgspec.msgpack.decode(
        msgspec.msgpack.encode(model), type=type(model)))
    ids = [one.assign(v) for v in vectors]
    assert ids == [two.assign(v) for v in vectors]
    planted = [planted_cluster(f"text {i}", sim) for i in range(100)]
    # The clusters found are the planted ones, up to renaming.
    assert len({(p, c) for p, c in zip(planted, ids, strict=True)}) == 4


def test_trainer_novelty_test_says_what_the_direct_squared_distance_says() -> None:
    """The fast novelty test equals min(((centres - x) ** 2).sum(1)) > bar, also at the bar."""
    from iterrefine.selection.centroids import _NOVEL_SPREADS, _Centres

    rng = np.random.default_rng(4)
    centres = _Centres.of(rng.normal(size=(32, 48)) * 3.0)
    trainer = Trainer(SelectionConfig(k=4, warmup=40), embedding_model="m", writer="w")
    for scale in (0.01, 0.5, 1.0, 4.0, 50.0):
        for _ in range(50):
            vector = (centres.matrix[rng.integers(32)]
                      + rng.normal(size=48) * scale).astype(np.float32)
            x = vector.astype(np.float64)
            nearest = float(np.min(((centres.matrix - x) ** 2).sum(axis=1)))
            # Bars far off, and exactly at the distance or one float below it.
            for bar in (nearest * 0.5, nearest * 2.0, nearest, np.nextafter(nearest, 0.0)):
                trainer._spread = bar / _NOVEL_SPREADS
                assert trainer._is_novel(centres, vector) is (
                    nearest > _NOVEL_SPREADS * trainer._spread)


NO_REASONING = HIGH.replace("Verdict: high", "Involves reasoning: no\nVerdict: high")


@pytest.mark.parametrize("task_filter", [True, False])
async def test_task_filter_rejects_items_without_reasoning_only_when_on(
    task_filter: bool,
) -> None:
    """Filter on: items.rejected with reason not_reasoning; off: scored, the answer kept."""
    async with StageKit({"score": NO_REASONING}, pipeline={"task_filter": task_filter}) as kit:
        out = only(await kit.handle("score", make_item()))
    assert out.item.judgement.involves_reasoning is False
    if task_filter:
        assert (out.topic, out.outcome, out.item.status_reason) == (
            "items.rejected", "not_reasoning", "not_reasoning")
    else:
        assert out.topic == "items.scored"


async def test_cluster_quota_routes_by_cluster_and_records_the_decision() -> None:
    """Route under cluster_quota writes decision and rank into the item's selection."""
    judged = Judgement(usable=True, reason="", scores=None, verdict="high", justification="")
    difficulties = np.random.default_rng(1).permutation(50).astype(float)
    async with StageKit(pipeline={"routing_policy": "cluster_quota"}) as kit:
        outs = [only(await kit.handle("route", make_item(judgement=judged, difficulty=Difficulty(
                    value=value, metric="instruction_ppl", model="m"),
                    selection=Selection(cluster=3, model_version=1))))
                for value in difficulties]
    decisions = [o.item.selection.decision for o in outs]
    assert decisions == [o.item.quality for o in outs]
    assert abs(sum(d == "high" for d in decisions) - 40) <= 2  # k_ratio 0.8 of cluster 3
    assert all(o.item.selection.rank is not None for o in outs)
    assert {o.topic for o in outs if o.item.quality == "low"} == {"items.refine"}


def test_the_papers_selection_is_switched_on_from_a_toml_file(tmp_path: Any) -> None:
    """``[pipeline]`` task_filter/routing_policy and ``[selection]`` parse into the config."""
    path = tmp_path / "paper.toml"
    path.write_text('[pipeline]\ntask_filter = true\nrouting_policy = "cluster_quota"\n'
                    '[selection]\nk = 132\nk_ratio = 0.8\ndifficulty_metric = "ifd"\n')
    config = load_config(path)
    assert config.pipeline.task_filter and config.pipeline.routing_policy == "cluster_quota"
    assert (config.selection.k, config.selection.difficulty_metric) == (132, "ifd")


async def test_long_items_are_cut_to_max_chars_before_the_difficulty_call() -> None:
    """A long item is sent cut to max_prompt_chars, so it fits a small model's context."""
    prompts: list[str] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        prompts.append(json.loads(request.content)["prompt"])
        return httpx2.Response(200, content=_completion([None, -1.0, -2.0], [0, 1, 2], 3))

    config = LLMRoleConfig(base_url="http://llm.test/v1", model="d", max_retries=0)
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(answer)) as http, LLMClient(
        "difficulty", config, http_client=http
    ) as llm:
        scorer = DifficultyScorer(llm, "instruction_ppl", "d", max_chars=300)
        found = await scorer.score("Summarise: " + "word " * 5000, "", "ok")
    assert len(prompts) == 1 and len(prompts[0]) == 300
    assert found.value == pytest.approx(np.exp(1.5))


class _Model:
    """The score stage's view of a trained model (real Assigner), without Kafka."""

    def __init__(self, assigner: Assigner) -> None:
        self.assigner = assigner
        self.observed: list[tuple[int, float] | None] = []

    def place(self, vector: np.ndarray) -> Placement:
        cluster, cut = self.assigner.place(vector)
        return Placement(cluster, self.assigner.model.version, cut,
                         self.assigner.model.high_share)

    async def observe(self, vector: np.ndarray, key: tuple[int, float] | None = None) -> None:
        self.observed.append(key)


async def test_online_scoring_sends_each_item_to_its_clusters_partition() -> None:
    """Online, the score stage's output carries partition_by = the item's cluster (one
    route worker owns each cluster's rank), the trainer hears the item's rank key, and
    the item records mode, model version and how its vector was pooled."""
    import dataclasses

    from iterrefine.selection import Selector

    sim_config = SimConfig(embedding_clusters=3, embedding_dim=16)
    trainer = Trainer(SelectionConfig(k=3, warmup=30), embedding_model="e", writer="w")
    for i in range(30):
        trainer.collect(embedding(alpaca_prompt(f"Topic {i}?", ""), sim_config)
                        .astype(np.float32), (1, 0.0))
    model = trainer.propose(None)
    assert model is not None
    placed = _Model(Assigner(model))
    async with SimServer(sim_config, port=0) as sim, \
            LLMClient("embedding", _role(sim, "e")) as e, \
            LLMClient("difficulty", _role(sim, "d")) as d, \
            StageKit({"score": HIGH}, pipeline={"routing_policy": "cluster_quota"}) as kit:
        kit._ctx = dataclasses.replace(kit.ctx, selector=Selector(
            DifficultyScorer(d, "instruction_ppl", "sim-d"), Embedder(e, "sim-e"), placed))
        outs = [only(await kit.handle("score", make_item(instruction=f"Why {i}?", output="x")))
                for i in range(6)]
    for out in outs:
        selection = out.item.selection
        assert selection is not None and selection.cluster is not None
        assert out.partition_by == selection.cluster
        assert (selection.mode, selection.model_version, selection.pooling) == (
            "online", 1, "server")
    assert placed.observed and all(key is not None and key[0] == 2 for key in placed.observed)
