"""The selection's two modes, unit by unit: exact procedure, on-disk vectors, online quota,
refits, cuts, embeddings pooled here, and the decisions' lineage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from iterrefine.config import KafkaConfig, SelectionConfig
from iterrefine.errors import ConfigError, IterrefineError, LLMError, ValidationError
from iterrefine.item.model import Difficulty, Judgement, Selection
from iterrefine.selection import (
    Assigner,
    ClusterQuota,
    DecisionTable,
    ExactQuotaPolicy,
    Trainer,
    effective_k,
    embedding_of,
    exact_clusters,
    exact_decisions,
    exact_quota,
    is_exact,
)
from iterrefine.selection import _records as records
from iterrefine.selection._cuts import cuts
from iterrefine.selection._vector_file import VectorFile
from iterrefine.testing import make_item

pytestmark = pytest.mark.unit


def _inversions(labels: list[bool], levels: list[int], clusters: list[Any]) -> int:
    """Pairs (judge-high refined, judge-low kept) within one cluster."""
    count = 0
    for cluster in set(clusters):
        members = [i for i, c in enumerate(clusters) if c == cluster]
        refined_high = sum(1 for i in members if levels[i] == 2 and not labels[i])
        kept_low = sum(1 for i in members if levels[i] == 1 and labels[i])
        count += refined_high * kept_low
    return count


def test_exact_decisions_rank_each_cluster_like_the_paper() -> None:
    """Positions follow (level, difficulty) descending per cluster; high = top round(0.8n),
    clusters of 1–2 keep everything; the same labels as exact_quota."""
    rng = np.random.default_rng(4)
    clusters = [*rng.integers(0, 9, size=300).tolist(), 20, 21, 21]
    levels = rng.integers(1, 3, size=303).tolist()
    difficulties = rng.random(303).tolist()
    decisions = exact_decisions(clusters, levels, difficulties, 0.8)
    assert [d.high for d in decisions] == exact_quota(clusters, levels, difficulties, 0.8)
    for cluster in set(clusters):
        members = [i for i, c in enumerate(clusters) if c == cluster]
        by_position = sorted(members, key=lambda i: decisions[i].position)
        keys = [(levels[i], difficulties[i]) for i in by_position]
        assert keys == sorted(keys, reverse=True)
        assert sum(decisions[i].high for i in members) == round(0.8 * len(members))
    assert all(decisions[i].high for i in (300, 301, 302))  # clusters of 1 and 2


def test_effective_k_keeps_the_papers_k_on_a_large_input_and_lowers_it_on_a_small_one() -> None:
    """k stays 132 with enough survivors; below 132·min_cluster_items it is n // m; 1 keeps
    132 whenever k-means can run it (the paper's own 169 items)."""
    assert effective_k(20_000, 132, 10) == 132
    assert effective_k(474, 132, 10) == 47
    assert effective_k(169, 132, 1) == 132
    assert effective_k(100, 132, 1) == 100
    assert effective_k(3, 132, 10) == 1
    assert effective_k(0, 132, 10) == 0


def test_vector_file_keeps_vectors_on_disk_and_a_redelivery_overwrites_its_row(
    tmp_path: Path,
) -> None:
    """Rows go to a file; a redelivered id overwrites; the matrix is memory-mapped and a
    subset is copied on disk; another dimension is a clear error; close deletes."""
    store = VectorFile(tmp_path)
    vectors = np.arange(12, dtype="<f4").reshape(4, 3)
    for i, vector in enumerate(vectors):
        store.put(f"id{i}", 1 + i % 2, float(i), vector.tobytes(), 3)
    store.put("id1", 2, 9.0, (vectors[1] * 10).tobytes(), 3)
    assert len(store) == 4 and store.difficulties[1] == 9.0
    whole = store.matrix([0, 1, 2, 3])
    assert isinstance(whole, np.memmap)
    assert np.array_equal(whole[1], vectors[1] * 10) and np.array_equal(whole[3], vectors[3])
    subset = store.matrix([3, 0])
    assert np.array_equal(np.asarray(subset), vectors[[3, 0]])
    with pytest.raises(IterrefineError, match="embedding model changed"):
        store.put("id9", 1, 0.0, b"\0" * 8, 2)
    store.close()
    assert list(tmp_path.iterdir()) == []


def test_exact_clusters_in_place_on_a_memory_map_gives_the_same_labels(tmp_path: Path) -> None:
    """The run's in-place k-means on the memory-mapped file labels like the library's
    procedure on an in-memory copy (the same arithmetic on the same floats)."""
    rng = np.random.default_rng(2)
    data = (rng.normal(size=(400, 8)) + rng.integers(0, 5, size=(400, 1)) * 3).astype("<f4")
    store = VectorFile(tmp_path)
    for i, row in enumerate(data):
        store.put(str(i), 1, 0.0, row.tobytes(), 8)
    mapped = store.matrix(list(range(400)))
    assert exact_clusters(mapped, 7, 0, in_place=True).tolist() == \
        exact_clusters(data.copy(), 7, 0).tolist()
    # Restored after centring, to rounding (the file is the run's scratch copy).
    assert np.allclose(np.asarray(mapped), data, atol=1e-5)
    store.close()


def _decision_table(run: str, *found: Any) -> DecisionTable:
    table = DecisionTable(KafkaConfig(), "127.0.0.1:1", run)
    for record in found:
        table._offer(records.encode(record))
    return table


def _judged(level: int, difficulty: float, **changes: Any) -> Any:
    judgement = Judgement(usable=True, reason="", scores=None,
                          verdict="high" if level == 2 else "low", justification="")
    return make_item(judgement=judgement, difficulty=Difficulty(
        value=difficulty, metric="instruction_ppl", model="m"), **changes)


def test_exact_policy_routes_by_the_runs_decision_and_records_it() -> None:
    """Route under exact mode takes the decision of the run (not of the item's own key),
    and the item records cluster, rank, bar, size, k, mode and rule; a record of another
    run is ignored, and the table is complete only at its End record."""
    kept, refined = _judged(1, 0.1, instruction="Kept?"), _judged(2, 9.0, instruction="Not?")
    table = _decision_table(
        "run-1",
        records.Decision(run="run-1", id=kept.id, cluster=4, position=0, size=5, highs=4, k=7),
        records.Decision(run="run-0", id=refined.id, cluster=1, position=0, size=5, highs=4,
                         k=7),
        records.Decision(run="run-1", id=refined.id, cluster=4, position=4, size=5, highs=4,
                         k=7))
    assert not table.complete
    table._offer(records.encode(records.End(run="run-1", decisions=2, k=7, k_configured=132)))
    assert table.complete
    policy = ExactQuotaPolicy(table)
    assert policy.quality(kept) == "high" and policy.quality(refined) == "low"
    explained = policy.explain(refined, "low").selection
    assert explained is not None
    assert (explained.cluster, explained.rank, explained.bar, explained.cluster_items,
            explained.k, explained.mode, explained.rule, explained.decision) == (
        4, 0.8, 0.8, 5, 7, "exact", "exact", "low")


def test_an_item_without_an_exact_decision_is_a_clear_error() -> None:
    """An item the run never decided (e.g. replayed into route) is a ValidationError with
    reason no_selection_decision (the runtime dead-letters it), not a guess."""
    policy = ExactQuotaPolicy(_decision_table("run-1"))
    with pytest.raises(ValidationError, match="no exact selection decision") as raised:
        policy.quality(_judged(2, 1.0))
    assert raised.value.reason == "no_selection_decision"


def test_exact_mode_outside_run_is_refused_and_auto_follows_the_run() -> None:
    """mode = exact needs run's id (a worker alone has no finite input); auto is exact
    only when run set one."""
    with pytest.raises(ConfigError, match="iterrefine run"):
        is_exact(SelectionConfig(mode="exact"))
    assert not is_exact(SelectionConfig())
    assert is_exact(SelectionConfig(exact_run_id="r"))
    assert not is_exact(SelectionConfig(mode="online", exact_run_id="r"))


def test_online_quota_never_refines_a_judge_high_item_while_keeping_a_judge_low_one() -> None:
    """Clusters whose judge-high share ranges from 5% to 95% (keys in random order), and
    one that drifts: no cluster ends with a refined level-2 item beside a kept level-1
    item, and each steady cluster's high share stays near k_ratio."""
    rng = np.random.default_rng(8)
    quota = ClusterQuota(0.8)
    labels, levels, clusters = [], [], []
    shares = np.linspace(0.05, 0.95, 10)
    for _ in range(3000):
        cluster = int(rng.integers(0, 10))
        level = 2 if rng.random() < shares[cluster] else 1
        labels.append(quota.decide(cluster, (level, float(rng.random()))).high)
        levels.append(level)
        clusters.append(cluster)
    assert _inversions(labels, levels, clusters) == 0
    for cluster in range(10):
        share = np.mean([h for h, c in zip(labels, clusters, strict=True) if c == cluster])
        assert abs(share - 0.8) < 0.08
    # A cluster that drifts from 10% to 100% judge-high: once it has kept judge-low
    # items, it keeps every judge-high one, even when the window alone would refine some.
    drift = [(2 if rng.random() < 0.1 else 1) for _ in range(100)] + [2] * 1000
    kept = [quota.decide(99, (level, float(rng.random()))).high for level in drift]
    assert _inversions(kept, drift, [99] * len(drift)) == 0


def test_a_decision_that_binds_the_cluster_waits_for_evidence() -> None:
    """The first judge-low item of a new cluster is refined (keeping it would bind every
    later judge-high item), the first judge-high one kept; with a cut, the cut decides."""
    quota = ClusterQuota(0.8)
    first = quota.decide(1, (1, 5.0))
    assert (first.high, first.rule) == (False, "evidence")
    assert quota.decide(2, (2, 0.0)).high
    quota.decide(3, (2, 1.0))
    with_cut = quota.decide(3, (1, 0.5), cut=(1, 0.7))
    assert (with_cut.high, with_cut.rule) == (False, "cut")
    binding = quota.decide(3, (2, 0.5), cut=(2, 0.7))  # below the cut, but 2 items seen
    assert (binding.high, binding.rule) == (True, "evidence")


def test_cuts_are_the_papers_quota_on_the_recent_items() -> None:
    """Each centre's cut is the key of the last item kept by round(0.8·n) on its recent
    items; a centre with fewer than 5 recent items has none."""
    centres = np.array([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0]])
    data = np.array([[0.1, 0.0]] * 10 + [[10.0, 9.9]] * 5 + [[-10.0, 10.0]] * 2)
    keys: list[tuple[int, float] | None] = [(2, float(i)) for i in range(6)] + [
        (1, float(i)) for i in range(4)] + [(1, 1.0)] * 5 + [(2, 1.0)] * 2
    levels, difficulties = cuts(centres, data, keys, 0.8)
    assert (levels[0], difficulties[0]) == (1, 2.0)  # 8 kept of 10: six level 2, then 3, 2
    assert (levels[1], difficulties[1]) == (1, 1.0)
    assert levels[2] == 0


def test_refits_follow_topics_that_arrive_later_and_retire_the_old_centroids() -> None:
    """Topics A for the warm-up, then only topics B: after the refits B's vectors get
    cluster ids of their own (never one of the warm-up ids), retired centroids are
    counted, and an assigner of the decoded model gives the same ids."""
    import msgspec

    rng = np.random.default_rng(1)
    centres_a, centres_b = rng.normal(size=(4, 8)) * 5, rng.normal(size=(4, 8)) * 5 + 40

    def draw(centres: np.ndarray, n: int) -> list[np.ndarray]:
        picked = centres[rng.integers(0, len(centres), size=n)]
        return list((picked + rng.normal(size=(n, 8)) * 0.3).astype(np.float32))

    config = SelectionConfig(k=4, warmup=40, batch_size=20, refit_every=100, refit_window=200)
    trainer = Trainer(config, embedding_model="m", writer="w")
    model = None
    for vector in draw(centres_a, 60) + draw(centres_b, 600):
        trainer.collect(vector, (1, 0.0))
        proposal = trainer.propose(model)
        if proposal is not None:
            trainer.accepted(proposal, proposal)
            model = proposal
    assert model is not None and model.retired >= 4 and model.next_id >= 8
    probe = draw(centres_b, 50)
    ids = {Assigner(model).assign(v) for v in probe}
    assert ids.isdisjoint(range(4)) and len(ids) == 4
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(model), type=type(model))
    assert [Assigner(decoded).assign(v) for v in probe] == [Assigner(model).assign(v)
                                                               for v in probe]


def test_embeddings_are_pooled_and_normalised_here_and_say_how() -> None:
    """Per-token vectors (OpenAI shape or llama.cpp's native list) are mean- or
    last-pooled here; one vector is the server's pooling; l2 is applied here; a zero
    vector cannot be normalised."""
    tokens = {"data": [{"embedding": [[1.0, 2.0], [3.0, 6.0]]}]}
    mean = embedding_of(json.dumps(tokens).encode(), "mean", "none")
    assert mean.vector.tolist() == [2.0, 4.0] and (mean.pooling, mean.tokens) == ("mean", 2)
    last = embedding_of(json.dumps([{"index": 0, "embedding": [[1.0, 2.0], [3.0, 4.0]]}])
                        .encode(), "last", "l2")
    assert np.allclose(last.vector, [0.6, 0.8]) and (last.pooling, last.normalization) == (
        "last", "l2")
    served = embedding_of(b'{"data": [{"embedding": [3.0, 4.0]}]}', "mean", "none")
    assert served.pooling == "server" and served.vector.tolist() == [3.0, 4.0]
    assert served.normalization == "server"  # whatever the server did (llama.cpp: L2)
    again = embedding_of(b'{"data": [{"embedding": [3.0, 4.0]}]}', "mean", "l2")
    assert again.normalization == "l2" and np.allclose(again.vector, [0.6, 0.8])
    with pytest.raises(LLMError, match="zero vector"):
        embedding_of(b'{"data": [{"embedding": [0.0, 0.0]}]}', "mean", "l2")


def test_selection_config_rejects_a_refit_window_smaller_than_k() -> None:
    """Refits need at least k vectors; min_cluster_items must be positive."""
    with pytest.raises(ConfigError, match="refit_window"):
        SelectionConfig(k=50, warmup=60, refit_window=10)
    with pytest.raises(ConfigError, match="min_cluster_items"):
        SelectionConfig(min_cluster_items=0)
    assert Selection(cluster=None).mode is None  # items routed before the modes existed
