"""The paper's selection in a stream against its batch procedure, on planted clusters.

20,000 simulated items (``--quick``: 5,000) with vectors from the simulator's planted
cluster structure (``iterrefine.sim._vectors.embedding``: ``--planted`` seeded centres,
noise of norm ``--noise``), a judge level (2 for 60% of the items, by text hash) and an
instruction-perplexity difficulty computed from the simulator's echoed logprobs (the
same decoding and perplexity code as the ``difficulty`` role).

Contenders, on the same vectors, levels and difficulties:

* **stream** — what the pipeline runs: items in arrival order; the trainer fits
  ``MiniBatchKMeans`` on the first ``warmup`` vectors, then ``partial_fit`` every
  ``batch_size`` (each version accepted at once, as on the model topic with one
  trainer); every item is assigned by the newest accepted model (``None`` during
  warm-up) and routed by ``ClusterQuotaPolicy`` (running per-cluster rank).
* **exact** — the paper's procedure: ``KMeans(n_clusters=k, random_state=0)`` over all
  vectors, then the top ``round(k_ratio·n)`` of every cluster by (level, difficulty).

Reported: agreement of high/low labels (all items, and items after warm-up); the worst
per-cluster deviation of the high share from ``k_ratio`` over clusters with ≥ 20 items
after warm-up; cluster recovery (adjusted Rand index against the planted clusters);
items/s of the stream path (assign + train + route, in this process, no Kafka or HTTP)
and this process's peak RSS (VmHWM) after the stream phase and after the exact phase.

With ``--route-worker``, the items (with their stream cluster ids and difficulties, as
the score stage writes them) are also put in ``items.scored`` of an embedded broker and
drained by ONE real route worker process (``pipeline_worker.py --stages route``) under
``cluster_quota``, and again under ``threshold`` for comparison: its peak RSS (VmHWM)
and items/s.

Run ``python benchmarks/selection.py [--quick] [--items N] [--route-worker]``; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from typing import Any

import harness
import msgspec
import numpy as np

from iterrefine.config import SelectionConfig
from iterrefine.item.model import Difficulty, Judgement, Original, Selection
from iterrefine.item.records import new_item
from iterrefine.selection import (
    Assigner,
    ClusterQuotaPolicy,
    Trainer,
    alpaca_prompt,
    exact_clusters,
    exact_quota,
    perplexity,
)
from iterrefine.sim import SimConfig
from iterrefine.sim._vectors import echo_logprobs, embedding, planted_cluster
from iterrefine.sim.answers import unit

_VOCABULARY = [f"w{n}" for n in range(400)]


def _texts(n: int) -> list[str]:
    rng = np.random.default_rng(7)
    return [
        f"Task {i}: " + " ".join(rng.choice(_VOCABULARY, size=int(rng.integers(6, 30))))
        for i in range(n)
    ]


def _items(texts: list[str]) -> list[Any]:
    items = []
    for text in texts:
        level = 2 if unit("level", text) < 0.6 else 1
        values = echo_logprobs(alpaca_prompt(text, ""))["token_logprobs"][:-1]
        judgement = Judgement(usable=True, reason="", scores=None,
                              verdict="high" if level == 2 else "low", justification="")
        item = new_item(Original(instruction=text, input="", output="answer"))
        items.append(item.with_changes(
            judgement=judgement,
            difficulty=Difficulty(value=perplexity(values), metric="instruction_ppl",
                                  model="sim-difficulty")))
    return items


def _stream(items: list[Any], vectors: np.ndarray, config: SelectionConfig) -> dict[str, Any]:
    trainer = Trainer(config, embedding_model="sim-embedding", writer="bench")
    policy = ClusterQuotaPolicy(config)
    assigner: Assigner | None = None
    labels: list[bool] = []
    clusters: list[int | None] = []
    versions = 0
    routed_items = []
    started = time.perf_counter()
    for item, vector in zip(items, vectors, strict=True):
        if assigner is None:
            cluster, version = None, 0
        else:
            cluster, version = assigner.assign(vector), assigner.model.version
        trainer.collect(vector)
        proposal = trainer.propose(None if assigner is None else assigner.model)
        if proposal is not None:
            trainer.accepted(proposal, proposal)
            assigner = Assigner(proposal)
            versions = proposal.version
        routed = item.with_changes(selection=Selection(
            cluster=cluster, model_version=version, embedding_model="sim-embedding"))
        labels.append(policy.quality(routed) == "high")
        routed_items.append(routed)
        clusters.append(cluster)
    seconds = time.perf_counter() - started
    return {"labels": labels, "clusters": clusters, "seconds": seconds, "versions": versions,
            "routed": routed_items}


def _worst_deviation(labels: list[bool], clusters: list[Any], k_ratio: float,
                     min_size: int = 20) -> tuple[float, int]:
    groups: dict[Any, list[bool]] = defaultdict(list)
    for label, cluster in zip(labels, clusters, strict=True):
        if cluster is not None:
            groups[cluster].append(label)
    big = [g for g in groups.values() if len(g) >= min_size]
    worst = max((abs(sum(g) / len(g) - k_ratio) for g in big), default=float("nan"))
    return worst, len(big)


def _route_workers(routed: list[Any], k_ratio: float) -> dict[str, Any]:
    """Drain the scored items with one real route worker per policy; its RSS and speed."""
    import asyncio

    import simproc

    from iterrefine.config import PipelineConfig
    from iterrefine.item.model import encode_item

    values = [encode_item(item) for item in routed]
    out: dict[str, Any] = {}
    harness.quiet_logging()
    with harness.bench_session(quick=False) as bench, simproc.SimProcess(
        log_path=bench.log("selection-sim"), latency_ms=0, capacity=0, low_share=0.5,
        reject_share=0.0, lose_prob=0.5,
    ) as sim:
        for policy in ("cluster_quota", "threshold"):
            config = harness.bench_config(
                bench.bootstrap, bench.prefix(f"selection-{policy}"),
                pipeline=PipelineConfig(routing_policy=policy))
            config = msgspec.structs.replace(
                config, selection=SelectionConfig(k_ratio=k_ratio))
            asyncio.run(harness.produce(config, "items.scored", values))
            worker = simproc.run_pipeline_worker(bench, sim, config, name=f"route-{policy}",
                                                 drain=len(values), stages="route",
                                                 timeout_s=900)
            simproc.check_pipeline_result(worker.result, f"route worker ({policy})")
            out[policy] = {
                "peak_rss_mb": worker.peak_rss_mb,
                "items_per_s": round(len(values) / worker.result["wall_s"], 1),
                "cpu_us_per_item": round(worker.result["cpu_s"] / len(values) * 1e6, 1),
            }
    return out


def run(*, items: int, planted: int, k: int, k_ratio: float, warmup: int, batch_size: int,
        dim: int, noise: float, route_worker: bool = False) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score

    sim = SimConfig(embedding_clusters=planted, embedding_dim=dim, embedding_noise=noise)
    config = SelectionConfig(k=k, k_ratio=k_ratio, warmup=warmup, batch_size=batch_size)
    texts = _texts(items)
    prompts = [alpaca_prompt(text, "") for text in texts]
    vectors = np.stack([embedding(p, sim) for p in prompts]).astype(np.float32)
    truth = [planted_cluster(p, sim) for p in prompts]
    routed = _items(texts)
    rss_before = harness.proc_status_mb("self", "VmHWM")

    stream = _stream(routed, vectors, config)
    rss_stream = harness.proc_status_mb("self", "VmHWM")

    started = time.perf_counter()
    exact_ids = exact_clusters(vectors, k, config.random_state)
    levels = [2 if item.judgement.verdict == "high" else 1 for item in routed]
    difficulties = [item.difficulty.value for item in routed]
    exact = exact_quota(exact_ids.tolist(), levels, difficulties, k_ratio)
    exact_seconds = time.perf_counter() - started
    rss_exact = harness.proc_status_mb("self", "VmHWM")

    after = slice(warmup, None)
    agree_all = float(np.mean(np.array(stream["labels"]) == np.array(exact)))
    agree_after = float(np.mean(np.array(stream["labels"][after]) == np.array(exact[after])))
    worst, counted = _worst_deviation(stream["labels"][after], stream["clusters"][after],
                                      k_ratio)
    exact_worst, _ = _worst_deviation(exact, exact_ids.tolist(), k_ratio)
    assigned = [(t, c) for t, c in zip(truth, stream["clusters"], strict=True) if c is not None]
    workers = _route_workers(stream["routed"], k_ratio) if route_worker else None
    return {
        "route_worker": workers,
        "agreement": round(agree_all, 4),
        "agreement_after_warmup": round(agree_after, 4),
        "agreement_target": 0.9,
        "worst_cluster_high_share_deviation": round(worst, 4),
        "worst_deviation_target": 0.05,
        "clusters_counted": counted,
        "exact_worst_cluster_high_share_deviation": round(exact_worst, 4),
        "high_share_stream": round(float(np.mean(stream["labels"])), 4),
        "high_share_exact": round(float(np.mean(exact)), 4),
        "adjusted_rand_stream_vs_planted": round(float(adjusted_rand_score(
            [t for t, _ in assigned], [c for _, c in assigned])), 4),
        "adjusted_rand_exact_vs_planted": round(float(adjusted_rand_score(truth, exact_ids)), 4),
        "stream_items_per_s": round(items / stream["seconds"], 1),
        "stream_seconds": round(stream["seconds"], 3),
        "stream_model_versions": stream["versions"],
        "exact_seconds": round(exact_seconds, 3),
        "peak_rss_mb_before_stream": rss_before,
        "peak_rss_mb_after_stream": rss_stream,
        "peak_rss_mb_after_exact": rss_exact,
        "rss_note": "VmHWM of this process: the stream path in-process (no Kafka, no HTTP), "
                    "with the benchmark's own vectors and items resident",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 items")
    parser.add_argument("--items", type=int)
    parser.add_argument("--planted", type=int, default=132, help="planted clusters")
    parser.add_argument("--k", type=int, default=132, help="k-means clusters (the paper: 132)")
    parser.add_argument("--k-ratio", type=float, default=0.8)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--route-worker", action="store_true",
                        help="also drain the items with a real route worker per policy")
    args = parser.parse_args(argv)
    items = args.items or (5_000 if args.quick else 20_000)
    params = {"items": items, "planted": args.planted, "k": args.k, "k_ratio": args.k_ratio,
              "warmup": args.warmup, "batch_size": args.batch_size, "dim": args.dim,
              "noise": args.noise}
    load_before = harness.loadavg()
    result = run(**params, route_worker=args.route_worker)
    print(json.dumps({"benchmark": "selection", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                         time.gmtime()),
                      "machine": harness.machine(), "params": params,
                      "loadavg_before": load_before, "loadavg_after": harness.loadavg(),
                      "results": result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
