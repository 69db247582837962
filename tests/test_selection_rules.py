"""The selection's decision rules at their edges, with values worked out by hand from the
rules (docs/paper.md, "The selection as run"): the online quota's rank, bar, cut, count,
lexicographic and evidence rules, the evidence test itself, the window, the policies'
lineage and metrics, and the exact procedure's records. Each case is written so that a
rule changed by one operator or constant (``<`` for ``<=``, ``+`` for ``-``, a name)
changes an outcome asserted here (benchmarks/mutation.py)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from iterrefine.config import KafkaConfig, SelectionConfig
from iterrefine.consumers import route
from iterrefine.consumers.route import ThresholdPolicy
from iterrefine.errors import ValidationError
from iterrefine.item.model import Difficulty, Judgement, Selection
from iterrefine.observe.metrics import Metrics
from iterrefine.selection import (
    ClusterQuota,
    DecisionTable,
    ExactQuotaPolicy,
    effective_k,
    exact_clusters,
    exact_decisions,
)
from iterrefine.selection import _records as records
from iterrefine.selection.exact import ExactDecision
from iterrefine.selection.policy import ClusterQuotaPolicy, rank_key
from iterrefine.testing import make_item

pytestmark = pytest.mark.unit


Step = tuple[bool, float, float, str]


def _steps(quota: ClusterQuota, *keys: Any) -> list[Step]:
    found = []
    for key in keys:
        d = quota.decide(0, key)
        found.append((d.high, d.rank, d.bar, d.rule))
    return found


def _check(found: list[Step], expected: list[Step]) -> None:
    assert [(h, r) for h, r, _, _ in found] == [(h, r) for h, r, _, _ in expected]
    assert [b for _, _, b, _ in found] == pytest.approx([b for _, _, b, _ in expected])
    assert [rule for *_, rule in found] == [rule for *_, rule in expected]


# --- the online quota: rank, bar, ties ------------------------------------------------------


def test_rank_counts_a_tie_as_half_above_and_the_bar_moves_by_the_deficit_over_the_window() -> None:
    """k = 0.8, judge-high items. 1st: empty window, rank 0, bar 0.8. 2nd ties the 1st:
    rank (0 + 1/2)/1 = 0.5; deficit 0.8·2 − 1 = 0.6, bar 0.8 + (0.6 − 0.8)/1 = 0.6: kept.
    3rd below both: rank 2/2 = 1; deficit 0.8·3 − 2 = 0.4, bar 0.8 + (0.4 − 0.8)/2 = 0.6:
    low by rank, but refining a judge-high item with a window of 2 (share 1, margin 1/2,
    1 − 1/2 = 0.5 not above 0.8) waits for evidence: kept, rule evidence."""
    found = _steps(ClusterQuota(0.8), (2, 1.0), (2, 1.0), (2, 0.5))
    _check(found, [(True, 0.0, 0.8, "rank"), (True, 0.5, 0.6, "rank"),
                   (True, 1.0, 0.6, "evidence")])


def test_an_item_whose_rank_equals_the_bar_is_not_high_by_rank() -> None:
    """k = 0.75: after one kept item, a tie has rank 0.5 and the bar is 0.75 + (0.75·2 − 1
    − 0.75)/1 = 0.5: rank < bar is false, so rank says low; refining a judge-high item on a
    window of one waits for evidence: high, rule evidence (not rank)."""
    found = _steps(ClusterQuota(0.75), (2, 1.0), (2, 1.0))
    _check(found, [(True, 0.0, 0.75, "rank"), (True, 0.5, 0.5, "evidence")])


def test_the_quotas_defaults_are_the_configs() -> None:
    """The defaults: window 2000 and 20 correction items (SelectionConfig's), a cut is
    overruled by a running count off by more than 2 highs, and decides below 30 items."""
    quota, config = ClusterQuota(0.8), SelectionConfig()
    assert (quota.window, quota.correction_items, quota.cut_slack, quota.cut_until) == (
        2000, 20, 2.0, 30)
    assert (config.rank_window, config.quota_correction_items) == (2000, 20)


def test_the_window_holds_exactly_its_size() -> None:
    """window = 2: after (2,1) and (2,2) both are in the window, so (2,1.5) ranks below one
    of two: 0.5. A 4th item sees only the last two, (2,2) and (2,1.5): (2,1.75) is 0.5."""
    found = _steps(ClusterQuota(0.8, window=2), (2, 1.0), (2, 2.0), (2, 1.5), (2, 1.75))
    assert [rank for _, rank, _, _ in found] == [0.0, 0.0, 0.5, 0.5]


# --- the cut and the running count ----------------------------------------------------------


def test_the_cut_decides_only_while_the_window_is_below_cut_until() -> None:
    """cut_until = 1: the 1st item (window 0) is decided by the cut (key above it: high);
    the 2nd (window 1 = cut_until) by the rank although the cut is above it."""
    quota = ClusterQuota(0.8, cut_until=1)
    first = quota.decide(0, (2, 1.0), (2, 0.5))
    second = quota.decide(0, (2, 1.0), (2, 5.0))
    assert (first.high, first.rule) == (True, "cut")
    assert (second.high, second.rank, second.rule) == (True, 0.5, "rank")


def test_a_key_equal_to_the_cut_is_at_the_cut_so_high() -> None:
    quota = ClusterQuota(0.8)
    decision = quota.decide(0, (2, 1.0), (2, 1.0))
    assert (decision.high, decision.rule) == (True, "cut")


def test_a_judge_low_item_below_the_cut_is_refined_by_the_cut() -> None:
    """cut_slack = 0.5 and the 1st item's deficit is 0.5 (0.5·1 − 0): not more than the
    slack, so the cut decides, and a judge-low key below it is low (binds nothing)."""
    decision = ClusterQuota(0.5, cut_slack=0.5).decide(0, (1, 1.0), (2, 0.0))
    assert (decision.high, decision.rule) == (False, "cut")


def test_a_deficit_beyond_the_slack_overrules_the_cut() -> None:
    """cut_slack = 0.5, k = 0.8: the 1st item's deficit 0.8 is more than the slack, so the
    count decides: a deficit (0.8 > 0) means high, though the key is below the cut."""
    decision = ClusterQuota(0.8, cut_slack=0.5).decide(0, (2, 1.0), (2, 5.0))
    assert (decision.high, decision.rule) == (True, "count")


def test_a_zero_deficit_is_no_reason_to_keep() -> None:
    """cut_slack = -1: the count always decides. k = 0.5: the 1st item (deficit 0.5) is
    high by count; the 2nd has deficit 0.5·2 − 1 = 0: count says low, and refining a
    judge-high item on a window of one waits for evidence: high, rule evidence."""
    quota = ClusterQuota(0.5, cut_slack=-1.0)
    first = quota.decide(0, (2, 1.0), (2, 0.0))
    second = quota.decide(0, (2, 1.0), (2, 0.0))
    assert (first.high, first.rule) == (True, "count")
    assert (second.high, second.rule) == (True, "evidence")


# --- the lexicographic invariant and the evidence rule --------------------------------------


def test_a_refined_judge_high_item_forces_later_judge_low_items_low() -> None:
    """k = 0.5, by hand (rank; bar = 0.5 + (0.5·(seen+1) − high − 0.5)/window):
    (2,1): rank 0, bar 0.5: kept by rank.
    (2,3): rank 0, bar 0: low by rank, window of 1 shows nothing: kept, evidence.
    (2,2): rank 1/2, bar 0.5 + (1.5 − 2 − 0.5)/2 = 0: window of 2 (1 − 1/2 = 0.5, not
           above 0.5): kept, evidence.
    (2,0): rank 1, bar 0.5 + (2 − 3 − 0.5)/3 = 0; window of 3: 1 − 1/3 > 0.5: refined by
           rank (the cluster has now refined level 2).
    (1,9): rank 1, bar 0.5 + (2.5 − 3 − 0.5)/4 = 0.25: lexicographic, low.
    (1,10): rank 4/5, bar 0.5 + (3 − 3 − 0.5)/5 = 0.4: still lexicographic (the highest
           level refined stays 2 after a level 1 is refined)."""
    found = _steps(ClusterQuota(0.5), (2, 1.0), (2, 3.0), (2, 2.0), (2, 0.0), (1, 9.0),
                   (1, 10.0))
    _check(found, [(True, 0.0, 0.5, "rank"), (True, 0.0, 0.0, "evidence"),
                   (True, 0.5, 0.0, "evidence"), (False, 1.0, 0.0, "rank"),
                   (False, 1.0, 0.25, "lexicographic"), (False, 0.8, 0.4, "lexicographic")])


def test_a_kept_judge_low_item_forces_later_judge_high_items_high() -> None:
    """k = 0.8, judge-low items: (1,1) rank 0 bar 0.8, but an empty window shows nothing:
    refined, evidence. (1,2): rank 0, bar 0.8 + (1.6 − 0.8)/1 = 1.6; a window of one
    (share above 0, margin 1) is no evidence: refined. (1,3): rank 0, bar 0.8 + (2.4 −
    0.8)/2 = 1.6; window of two, no judge-high: 0 + 1/2 < 0.8: kept by rank. Then a
    judge-high (2,0), whatever its rank, is kept: lexicographic."""
    found = _steps(ClusterQuota(0.8), (1, 1.0), (1, 2.0), (1, 3.0), (2, 0.0))
    _check(found, [(False, 0.0, 0.8, "evidence"), (False, 0.0, 1.6, "evidence"),
                   (True, 0.0, 1.6, "rank"), (True, 0.0, 0.8 + (0.8 * 4 - 1 - 0.8) / 3,
                                              "lexicographic")])


def test_keeping_a_judge_low_item_needs_the_judge_high_share_below_k() -> None:
    """k = 0.8: (2,1) kept by rank. (1,1): rank 1, bar 0.8 + (0.6 − 0.8)/1 = 0.6: low.
    (1,2): rank 1/2, bar 0.8 + (1.4 − 0.8)/2 = 1.1: high by rank, but the window's
    judge-high share is 1/2 with margin √(0.25/2) + 1/2 ≈ 0.85: 1.35 is not below 0.8:
    refined, evidence."""
    found = _steps(ClusterQuota(0.8), (2, 1.0), (1, 1.0), (1, 2.0))
    _check(found, [(True, 0.0, 0.8, "rank"), (False, 1.0, 0.6, "rank"),
                   (False, 0.5, 1.1, "evidence")])


def test_sure_measures_the_share_above_or_from_the_level_with_its_margin() -> None:
    """share + (√(share·(1 − share)/n) + 1/n) < k keeps (below), share − margin > k
    refines (above); share counts the levels above ``level`` (below) or from it (above)."""
    sure = ClusterQuota(0.8)._sure
    half = [(1, float(i)) for i in range(5)] + [(2, float(i)) for i in range(5)]
    # 0.5 + √(0.025) + 0.1 ≈ 0.758 < 0.8
    assert sure(half, 1, None, below=True)
    # 0.5 + √(0.125) + 0.5 ≈ 1.35
    assert not sure([(1, 0.0), (2, 0.0)], 1, None, below=True)
    # from level 1: share 1, margin 0.1: 0.9 > 0.8
    assert sure([(1, float(i)) for i in range(10)], 1, None, below=False)
    # from level 2 of half: 0.5 − 0.258 not above 0.8
    assert not sure(half, 2, None, below=False)
    assert not sure([], 2, None, below=False) and not sure([], 1, None, below=True)
    # exactly at k = 0.5: 0 + 1/2 is not below, 1 − 1/2 is not above
    at = ClusterQuota(0.5)._sure
    assert not at([(1, 0.0), (1, 1.0)], 1, None, below=True)
    assert not at([(2, 0.0), (2, 1.0)], 2, None, below=False)
    assert at([(1, 0.0), (1, 1.0), (1, 2.0)], 1, None, below=True)


def test_a_small_window_borrows_the_streams_share_and_a_big_one_outweighs_it() -> None:
    """With the stream's judge-high share the window counts PRIOR_ITEMS (40) more items
    at that share: 2 items, one judge-high, and a share of 0.5: (1 + 20) / 42 = 0.5,
    margin √(0.25/42) + 1/42 ≈ 0.10: 0.60 < 0.8, keeping a judge-low is sure (it was not,
    alone). At a share of 0.9: (1 + 36) / 42 ≈ 0.88 − 0.07 > 0.8, refining a judge-high
    is sure. 400 judge-high items outweigh a share of 0: 400 / 440 − 0.016 > 0.8."""
    sure = ClusterQuota(0.8)._sure
    assert sure([(1, 0.0), (2, 0.0)], 1, 0.5, below=True)
    assert not sure([(1, 0.0), (2, 0.0)], 1, 0.9, below=True)
    assert sure([(1, 0.0), (2, 0.0)], 2, 0.9, below=False)
    assert not sure([(1, 0.0), (2, 0.0)], 2, 0.5, below=False)
    assert sure([(2, float(i)) for i in range(400)], 2, 0.0, below=False)
    assert sure([], 1, 0.5, below=True)  # a new cluster: the stream's evidence alone


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_clusters_hold_the_share_with_the_streams_evidence(seed: int) -> None:
    """100 clusters of 10 items, 62 % judge-high, in random order (the real-text
    scenario's shape): with the stream's share the quota keeps 0.8 of them; without it
    every judge-low item waits for evidence its cluster never gathers, and the quota keeps
    0.65-0.67 (refining a third more than the paper)."""
    rng = random.Random(seed)
    arrivals = [cluster for cluster in range(100) for _ in range(10)]
    rng.shuffle(arrivals)
    keys = [(2 if rng.random() < 0.62 else 1, rng.random()) for _ in arrivals]
    for prior, low, high in ((0.62, 0.78, 0.82), (None, 0.6, 0.7)):
        quota = ClusterQuota(0.8)
        kept = [quota.decide(cluster, key, None, prior).high
                for cluster, key in zip(arrivals, keys, strict=True)]
        assert low <= sum(kept) / len(kept) <= high, prior


# --- the online policy: rank key, cluster, cut, lineage, metrics ----------------------------


def _judged(level: int | None, difficulty: float | None, **changes: Any) -> Any:
    judgement = None if level is None else Judgement(
        usable=True, reason="", scores=None, verdict="high" if level == 2 else "low",
        justification="")
    return make_item(judgement=judgement, difficulty=None if difficulty is None else Difficulty(
        value=difficulty, metric="instruction_ppl", model="m"), **changes)


def test_rank_key_is_judge_level_then_difficulty() -> None:
    assert rank_key(_judged(2, 3.5)) == (2, 3.5)
    assert rank_key(_judged(1, 3.5)) == (1, 3.5)
    assert rank_key(_judged(None, None)) == (1, 0.0)
    assert rank_key(_judged(2, None)) == (2, 0.0)


def _policy(metrics: Metrics | None = None, **config: Any) -> ClusterQuotaPolicy:
    return ClusterQuotaPolicy(SelectionConfig(**config), metrics)


def test_the_policy_builds_its_quota_from_the_config() -> None:
    policy = _policy(k_ratio=0.5, rank_window=7, quota_correction_items=3)
    assert (policy.quota.k_ratio, policy.quota.window, policy.quota.correction_items) == (
        0.5, 7, 3)


def test_the_policy_ranks_by_the_items_cluster_and_passes_its_cut() -> None:
    """The cluster from the selection; the cut (cut_level, cut_difficulty): a judge-low item
    below it is refined by the cut, one at or above it (a missing difficulty is 0) goes on
    to the evidence rule."""
    policy = _policy()
    below = _judged(1, 1.0, selection=Selection(cluster=3, cut_level=1, cut_difficulty=5.0))
    assert policy.quality(below) == "low" and policy.quota_rule() == "cut"
    at = _judged(1, 0.5, selection=Selection(cluster=4, cut_level=1, cut_difficulty=None))
    assert policy.quality(at) == "low" and policy.quota_rule() == "evidence"
    assert policy.quota.sizes() == {3: (1, 0), 4: (1, 0)}


def test_the_policy_passes_the_streams_share_to_the_quota() -> None:
    """The share recorded on the item (``selection.stream_high_share``) is the evidence
    the quota borrows. Four judge-high items are kept; a fifth ranked below them (rank 1,
    bar 0.6) is refined when the stream is 90 % judge-high (the cut falls inside
    judge-high: (4 + 36) / 44 − 0.07 > 0.8), and kept without the stream's share, since
    four items alone are no evidence (1 − 1/4 is not above 0.8)."""
    for share, quality, rule in ((0.9, "low", "rank"), (None, "high", "evidence")):
        policy = _policy()
        for i, difficulty in enumerate((1.0, 2.0, 3.0, 4.0, 0.0)):
            quality_now = policy.quality(_judged(2, difficulty, instruction=f"Item {i}",
                                                 selection=Selection(
                                                     cluster=7, stream_high_share=share)))
        assert (quality_now, policy.quota_rule()) == (quality, rule)


def test_a_ranking_route_replays_and_resets_its_policys_ranks() -> None:
    """What the runtime calls on a route worker handed partitions
    (``runtime.StatefulHandler``): a fresh route that replays the history ranks the next
    items as the route that routed it; after a reset it ranks as a fresh one. A stateless
    policy gets a plain route."""
    # Eight hard items, then eight easier ones: ranked below that history, the easier
    # ones are refined until the running count asks for highs; a fresh route keeps more.
    items = [_judged(1, float(20 - i if i < 8 else i), instruction=f"Item {i}",
                     selection=Selection(cluster=5)) for i in range(16)]
    no_context: Any = None  # the policy is given: the context is not read

    def routed(handler: Any, batch: list[Any]) -> list[str]:
        return [handler(item)[0].topic for item in batch]

    live, taken_over = (route.handler(no_context, _policy()) for _ in range(2))
    assert isinstance(taken_over, route.RankingRoute)
    expected = routed(live, items)[8:]
    for item in items[:8]:
        taken_over.replay(item)
    assert routed(taken_over, items[8:]) == expected
    fresh = routed(route.handler(no_context, _policy()), items[8:])
    assert fresh != expected  # the history matters, so the replay is seen
    taken_over.reset_state()
    assert routed(taken_over, items[8:]) == fresh
    assert type(route.handler(no_context, ThresholdPolicy(11.0))) is route.Route


def test_quota_rule_is_empty_before_the_first_item_and_then_the_last_rule() -> None:
    policy = _policy()
    assert policy.quota_rule() == ""
    policy.quality(_judged(2, 1.0, selection=Selection(cluster=1)))
    assert policy.quota_rule() == "rank"


def test_explain_records_the_last_decision_of_this_item_only() -> None:
    """Lineage: the decided item gets rank, bar, rule, mode online and the cluster's items
    so far; another item (or any before the first decision) gets no rank, bar or rule, and
    an unseen cluster no count. Stale fields of the item's selection are replaced."""
    policy = _policy()
    stale = dict(rank=0.99, bar=0.99, rule="exact", mode="exact", cluster_items=99)
    first = _judged(2, 1.0, instruction="First", selection=Selection(cluster=3, **stale))
    early = policy.explain(first, "high").selection
    assert early is not None
    assert (early.decision, early.rank, early.bar, early.rule, early.mode,
            early.cluster_items) == ("high", None, None, "", "online", None)
    assert policy.quality(first) == "high"
    second = _judged(1, 1.0, instruction="Second", selection=Selection(cluster=3, **stale))
    assert policy.quality(second) == "low"  # rank 1, bar 0.8 + (0.6 − 0.8)/1 = 0.6
    explained = policy.explain(second, "low").selection
    assert explained is not None
    assert (explained.decision, explained.rank, explained.rule, explained.mode,
            explained.cluster_items) == ("low", 1.0, "rank", "online", 2)
    assert explained.bar == pytest.approx(0.6)
    other = policy.explain(first, "high").selection
    assert other is not None
    assert (other.rank, other.bar, other.rule, other.mode, other.cluster_items) == (
        None, None, "", "online", 2)
    assert policy.explain(make_item(), "low").selection is None


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(f"iterrefine_{name}", labels)


def test_the_online_policy_counts_items_and_the_high_share_per_cluster() -> None:
    """Each cluster's share goes to its own series (the warm-up's is made first, so a
    cluster written to another cluster's series would show)."""
    registry = CollectorRegistry()
    policy = _policy(Metrics(registry))
    policy.quality(_judged(2, 1.0))
    policy.quality(_judged(2, 1.0, selection=Selection(cluster=3)))
    policy.quality(_judged(1, 1.0, selection=Selection(cluster=3)))
    assert _sample(registry, "selection_items_total", cluster="3", quality="high") == 1.0
    assert _sample(registry, "selection_items_total", cluster="3", quality="low") == 1.0
    assert _sample(registry, "selection_items_total", cluster="warmup", quality="high") == 1.0
    assert _sample(registry, "selection_high_share", cluster="3") == 0.5
    assert _sample(registry, "selection_high_share", cluster="warmup") == 1.0


# --- the exact policy and procedure ---------------------------------------------------------


def test_the_exact_policy_counts_items_and_the_clusters_high_share() -> None:
    item = _judged(1, 0.1)
    table = DecisionTable(KafkaConfig(), "127.0.0.1:1", "run-1")
    table._offer(records.encode(records.Decision(
        run="run-1", id=item.id, cluster=4, position=4, size=5, highs=4, k=7)))
    registry = CollectorRegistry()
    assert ExactQuotaPolicy(table, Metrics(registry)).quality(item) == "low"
    assert _sample(registry, "selection_items_total", cluster="4", quality="low") == 1.0
    assert _sample(registry, "selection_high_share", cluster="4") == 0.8


def test_the_exact_policys_missing_decision_says_why() -> None:
    table = DecisionTable(KafkaConfig(), "127.0.0.1:1", "run-1")
    with pytest.raises(ValidationError) as raised:
        ExactQuotaPolicy(table).quality(_judged(2, 1.0))
    assert str(raised.value).endswith(
        "has no exact selection decision: it was not scored by this run's score stage "
        "(replayed into route, or scored under another mode)")


def test_exact_decisions_record_cluster_place_size_and_highs() -> None:
    """Cluster 7: (2,0.1), (1,0.9), (2,0.5) rank (2,0.5), (2,0.1), (1,0.9); round(0.8·3)
    = 2 high. Cluster 2: one item, round(0.8) = 1 high."""
    assert exact_decisions([7, 2, 7, 7], [2, 1, 1, 2], [0.1, 0.3, 0.9, 0.5], 0.8) == [
        ExactDecision(7, 1, 3, 2), ExactDecision(2, 0, 1, 1), ExactDecision(7, 2, 3, 2),
        ExactDecision(7, 0, 3, 2)]


def test_effective_k_of_one_survivor_is_one() -> None:
    assert effective_k(1, 132, 10) == 1
    assert effective_k(1, 132, 1) == 1


def test_exact_clusters_finds_k_clusters_with_the_papers_seed() -> None:
    """Three far-apart pairs, k = 3: three clusters, one per pair."""
    vectors = np.array([[0, 0], [0, 0.1], [10, 0], [10, 0.1], [0, 10], [0.1, 10]],
                       dtype=np.float32)
    labels = exact_clusters(vectors, 3).tolist()
    assert len(set(labels)) == 3
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[4] == labels[5]


def test_exact_clusters_is_kmeans_with_the_papers_seed_0() -> None:
    """The paper ran KMeans(random_state=0): the labels are that run's (another seed
    numbers and splits these 40 points differently)."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    vectors = (rng.random((40, 4)) * 3 + 100).astype(np.float32)
    paper = KMeans(n_clusters=4, random_state=0, n_init="auto").fit_predict(vectors)
    other = KMeans(n_clusters=4, random_state=1, n_init="auto").fit_predict(vectors)
    assert paper.tolist() != other.tolist()
    assert exact_clusters(vectors, 4).tolist() == paper.tolist()


def test_exact_clusters_does_not_write_to_the_callers_vectors_unless_asked() -> None:
    """By default KMeans works on a copy (copy_x): a read-only matrix (e.g. a memory map
    opened read-only) clusters; centring it in place would fail on it."""
    rng = np.random.default_rng(0)
    vectors = (rng.random((40, 4)) * 3 + 100).astype(np.float32)
    frozen = vectors.copy()
    frozen.setflags(write=False)
    assert exact_clusters(frozen, 4).tolist() == exact_clusters(vectors, 4).tolist()
    assert exact_clusters(frozen, 4, in_place=False).tolist() == exact_clusters(
        vectors, 4).tolist()
