"""The selection roles against a real OpenAI-compatible server, once: what comes back.

Runs ``DifficultyScorer`` (both metrics) and ``Embedder`` through ``LLMClient`` on the
first ``--items`` Dolly-sample items against real endpoints (e.g. llama.cpp's server
from ../shared/tools/realllm: one for completions, one started with ``--embedding``),
then clusters the vectors (``exact_clusters``) and applies the exact quota. Prints
JSON: the raw shapes the endpoints answered, the values, timings and any errors.

Run ``python benchmarks/selection_real.py --completions-url http://127.0.0.1:18082/v1
--embeddings-url http://127.0.0.1:18081/v1 [--items 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from iterrefine.config import LLMRoleConfig
from iterrefine.errors import IterrefineError
from iterrefine.llm import LLMClient
from iterrefine.selection import DifficultyScorer, Embedder, alpaca_prompt, exact_clusters

SAMPLE = Path(__file__).parent.parent / "examples" / "dolly_sample.jsonl"


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def _raw_shapes(completions: str, embeddings: str) -> dict[str, Any]:
    """One raw request per endpoint, to record what the server really answers."""
    prompt = alpaca_prompt("Name two colours.", "")
    out: dict[str, Any] = {}
    # Never max_tokens=0: llama.cpp's server reads it as "no limit" and generates on.
    for max_tokens in (1,):
        body = {"prompt": prompt, "echo": True, "logprobs": 0, "max_tokens": max_tokens,
                "temperature": 0}
        answer = _post(f"{completions}/completions", body)
        choice = answer["choices"][0]
        logprobs = choice.get("logprobs") or {}
        out[f"completions_max_tokens_{max_tokens}"] = {
            "generated_chars": len(choice["text"]) - len(prompt),
            "tokens": len(logprobs.get("tokens") or []),
            "usage": answer.get("usage"),
            "first_logprobs": (logprobs.get("token_logprobs") or [])[:4],
            # The server names its model by file path: keep the file name only.
            "model": Path(str(answer.get("model"))).name,
        }
    answer = _post(f"{embeddings}/embeddings", {"input": prompt, "model": "x"})
    vector = answer["data"][0]["embedding"]
    out["embeddings"] = {
        "shape": [len(vector), len(vector[0])] if vector and isinstance(vector[0], list)
        else [len(vector)],
        "usage": answer.get("usage"),
    }
    return out


async def _scores(args: argparse.Namespace) -> dict[str, Any]:
    # Short items only: a 135M model on a shared 2-core machine evaluates ~60 tokens/s.
    rows = [row for line in SAMPLE.read_text().splitlines()
            if len((row := json.loads(line))["instruction"] + row["input"] + row["output"])
            < args.max_chars][: args.items]

    def role(base_url: str) -> LLMRoleConfig:
        return LLMRoleConfig(base_url=base_url, model="smollm2-135m-instruct",
                             max_concurrency=1, timeout_s=300, max_retries=1)

    completions, embeddings = role(args.completions_url), role(args.embeddings_url)
    results: dict[str, Any] = {"items": len(rows)}
    async with LLMClient("difficulty", completions) as dc, LLMClient("embedding", embeddings) as ec:
        for metric in ("instruction_ppl", "ifd"):
            scorer = DifficultyScorer(dc, metric, "smollm2-135m-instruct")
            values, errors, started = [], [], time.perf_counter()
            for row in rows:
                try:
                    found = await scorer.score(row["instruction"], row.get("input", ""),
                                               row["output"])
                    values.append(found.value)
                except IterrefineError as exc:
                    errors.append(str(exc)[:200])
            results[metric] = {
                "ok": len(values), "errors": errors[:3], "error_count": len(errors),
                "min": min(values, default=None), "median": statistics.median(values)
                if values else None, "max": max(values, default=None),
                "seconds_per_item": round((time.perf_counter() - started) / len(rows), 3),
            }
        embedder = Embedder(ec, "smollm2-135m-instruct")
        vectors, started = [], time.perf_counter()
        for row in rows:
            vectors.append(await embedder.embed(row["instruction"], row.get("input", "")))
        results["embedding"] = {
            "dim": int(vectors[0].shape[0]), "seconds_per_item":
            round((time.perf_counter() - started) / len(rows), 3),
            "norm_median": float(np.median([np.linalg.norm(v) for v in vectors])),
        }
        k = max(2, len(rows) // 5)
        labels = exact_clusters(np.stack(vectors), k)
        results["clusters"] = {"k": k, "sizes": np.bincount(labels).tolist()}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--completions-url", required=True)
    parser.add_argument("--embeddings-url", required=True)
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--max-chars", type=int, default=400,
                        help="skip items longer than this (instruction + input + output)")
    args = parser.parse_args(argv)
    out = {"raw": _raw_shapes(args.completions_url, args.embeddings_url),
           **asyncio.run(_scores(args))}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
