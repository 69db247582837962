"""``iterrefine run`` with the paper's selection on: simulator, real embedded broker."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import msgspec
import pytest

from iterrefine.config import SelectionConfig
from iterrefine.sim import SimServer
from iterrefine.tools.report import render_html

from .pipeline_support import assert_conserved, pipeline_config, run, sample_records


@pytest.mark.slow
async def test_paper_selection_runs_end_to_end_with_lineage(
    broker: str, sim: SimServer, tmp_path: Path
) -> None:
    """Task filter rejects not_reasoning items; routed items carry difficulty, cluster and
    decision; every id ends in exactly one terminal topic."""
    config = pipeline_config(broker, sim, task_filter=True, routing_policy="cluster_quota")
    # A narrow in-flight window makes items pass in waves, as in a stream, rather than
    # all 200 at once: the model then exists before most items are scored.
    config = msgspec.structs.replace(
        config,
        runtime=msgspec.structs.replace(config.runtime, max_in_flight=8),
        selection=SelectionConfig(k=3, warmup=15, batch_size=10, k_ratio=0.8,
                                  difficulty_metric="ifd"),
    )
    result = await run(config, tmp_path, sample_records(200))
    rows = assert_conserved(result, set(result.ingest.ids))
    reasons = Counter(row["item"]["status_reason"] for row in rows["rejected"])
    assert reasons["not_reasoning"] > 10
    routed = [row["item"] for row in rows["curated"] + rows["rejected"]
              if row["item"]["quality"] is not None]
    assert len(routed) > 100
    for item in routed:
        assert item["difficulty"]["metric"] == "ifd" and item["difficulty"]["value"] > 0
        assert item["selection"]["decision"] == item["quality"]
        assert item["selection"]["embedding_model"] == "sim-embedding"
        assert "vector" not in item["selection"]
    clustered = [item for item in routed if item["selection"]["cluster"] is not None]
    assert clustered, "the centroid model should exist before the run ends"
    assert {item["selection"]["model_version"] for item in clustered} >= {1}
    high = sum(item["quality"] == "high" for item in routed) / len(routed)
    assert abs(high - 0.8) < 0.06
    # The run summary and its HTML report show the clusters.
    selection = result.summary["selection"]
    assert selection["not_reasoning"] == reasons["not_reasoning"]
    assert sum(c["items"] for c in selection["clusters"].values()) == len(routed)
    page = render_html(result.summary, b"")
    assert "Selection (cluster quota" in page and "warmup" in page
