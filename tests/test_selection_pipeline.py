"""``iterrefine run`` with the paper's selection on: simulator, real embedded broker."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from iterrefine.app.run import RunOptions, run_pipeline
from iterrefine.config import SelectionConfig
from iterrefine.selection import alpaca_prompt, exact_clusters, exact_quota, perplexity
from iterrefine.sim import SimServer
from iterrefine.sim._vectors import echo_logprobs, embedding
from iterrefine.tools.report import render_html

from .pipeline_support import (
    FAST_SIM,
    assert_conserved,
    pipeline_config,
    run,
    sample_records,
    write_jsonl,
)


@pytest.mark.slow
async def test_online_selection_in_a_run_ranks_by_the_shared_model_with_lineage(
    broker: str, sim: SimServer, tmp_path: Path
) -> None:
    """mode = online in a run: task filter rejects not_reasoning items; routed items carry
    difficulty, cluster, model version, mode, rule and decision; no cluster refines a
    judge-high item beside a kept judge-low one; every id ends in one terminal topic."""
    config = pipeline_config(broker, sim, task_filter=True, routing_policy="cluster_quota")
    # A narrow in-flight window makes items pass in waves, as in a stream, rather than
    # all 200 at once: the model then exists before most items are scored.
    config = msgspec.structs.replace(
        config,
        runtime=msgspec.structs.replace(config.runtime, max_in_flight=8),
        selection=SelectionConfig(mode="online", k=3, warmup=15, batch_size=10, k_ratio=0.8,
                                  difficulty_metric="ifd", refit_every=40, refit_window=60),
    )
    result = await run(config, tmp_path, sample_records(200))
    rows = assert_conserved(result, set(result.ingest.ids))
    reasons = Counter(row["item"]["status_reason"] for row in rows["rejected"])
    assert reasons["not_reasoning"] > 10
    routed = [row["item"] for row in rows["curated"] + rows["rejected"]
              if row["item"]["quality"] is not None]
    assert len(routed) > 100
    for item in routed:
        selection = item["selection"]
        assert item["difficulty"]["metric"] == "ifd" and item["difficulty"]["value"] > 0
        assert selection["decision"] == item["quality"] and selection["mode"] == "online"
        assert selection["rule"] in {"rank", "cut", "count", "lexicographic", "evidence"}
        assert selection["embedding_model"] == "sim-embedding"
        assert selection["pooling"] == "server" and selection["normalization"] == "server"
        assert "vector" not in selection
    clustered = [item for item in routed if item["selection"]["cluster"] is not None]
    assert clustered, "the centroid model should exist before the run ends"
    assert {item["selection"]["model_version"] for item in clustered} >= {1}
    by_cluster: dict[Any, Counter[tuple[int, str]]] = {}
    for item in routed:
        level = 2 if item["judgement"]["verdict"] == "high" else 1
        by_cluster.setdefault(item["selection"]["cluster"], Counter())[
            (level, item["quality"])] += 1
    assert all(c[(2, "low")] * c[(1, "high")] == 0 for c in by_cluster.values())
    # The run summary and its HTML report show the clusters and the mode.
    selection = result.summary["selection"]
    assert selection["mode"] == "online" and selection["clustered"] == len(clustered)
    assert selection["not_reasoning"] == reasons["not_reasoning"]
    assert sum(c["items"] for c in selection["clusters"].values()) == len(routed)
    page = render_html(result.summary, b"")
    assert "Selection (cluster quota" in page and "warmup" in page


def _dolly(n: int) -> list[dict[str, Any]]:
    """``n`` distinct Dolly-sample items: the 120, then reworded copies of them."""
    base = sample_records(120)
    lead = ["", "Briefly: ", "In detail: ", "For a beginner: ", "Step by step: "]
    return [{**row, "instruction": lead[i // 120] + row["instruction"]}
            for i, row in enumerate((base * 5)[:n])]


@pytest.mark.slow
async def test_run_selects_exactly_the_papers_way_across_worker_processes(
    broker: str, sim: SimServer, tmp_path: Path
) -> None:
    """run --workers 2 --preset paper on 600 Dolly items: every curated row has a cluster,
    the high share is 0.8 ± 0.05, and the labels equal the library's exact procedure
    (KMeans over the same vectors, the quota on the same levels and difficulties); the
    summary says exact, how many were clustered, and that k was lowered (and why)."""
    config = pipeline_config(broker, sim, task_filter=True, routing_policy="cluster_quota",
                             exhausted_policy="keep_last_revision")
    source = write_jsonl(tmp_path / "input.jsonl", _dolly(600))
    result = await run_pipeline(config, RunOptions(
        input=source, output=tmp_path / "out.jsonl", timeout_s=150, workers=2))
    rows = assert_conserved(result, set(result.ingest.ids))
    curated = [row["item"] for row in rows["curated"]]
    assert len(curated) > 400 and all(i["selection"]["cluster"] is not None for i in curated)
    high = sum(item["quality"] == "high" for item in curated) / len(curated)
    assert abs(high - 0.8) <= 0.05
    summary = result.summary["selection"]
    assert (summary["mode"], summary["clustered"], summary["k_configured"]) == (
        "exact", len(curated), 132)
    assert summary["k"] == len(curated) // 10 and "few for k = 132" in summary["note"]
    # The same procedure, by the library, on what the simulator answered for these texts.
    items = sorted(curated, key=lambda item: item["id"])
    prompts = [alpaca_prompt(i["original"]["instruction"], i["original"]["input"])
               for i in items]
    vectors = np.stack([embedding(p, FAST_SIM) for p in prompts]).astype(np.float32)
    assert all(abs(perplexity(echo_logprobs(p)["token_logprobs"][:-1])
                   - i["difficulty"]["value"]) < 1e-9 for p, i in zip(prompts, items,
                                                                       strict=True))
    levels = [2 if i["judgement"]["verdict"] == "high" else 1 for i in items]
    clusters = exact_clusters(vectors, summary["k"], 0).tolist()
    expected = exact_quota(clusters, levels, [i["difficulty"]["value"] for i in items], 0.8)
    # Equal up to the names of the clusters (the run's rows come in another order).
    assert [i["quality"] == "high" for i in items] == expected
    pairs = {(i["selection"]["cluster"], c) for i, c in zip(items, clusters, strict=True)}
    assert len(pairs) == summary["k"]
    for item in items:
        selection = item["selection"]
        assert selection["mode"] == "exact" and selection["rule"] == "exact"
        assert (selection["rank"] < selection["bar"]) == (item["quality"] == "high")
        assert selection["k"] == summary["k"]
