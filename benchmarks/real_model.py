"""The pipeline on real model output: how answers read, and whether scaffolding leaks.

Runs ``iterrefine run``'s own path (:func:`iterrefine.app.run.run_pipeline`: the embedded
broker, the five stages, the exporter) on the first ``--items`` Dolly-sample items
against one real OpenAI-compatible endpoint, used for both roles, and prints one JSON
object:

* ``answers``: per task, answers readable on the first call, after re-asking, or never,
  and replies cut at ``max_tokens`` (``finish_reason=length``);
* ``outcomes``: the run summary's curated / rejected / dlq counts and item statuses;
* ``scaffolding_rows``: curated rows whose instruction, input or output contains prompt
  scaffolding — data-block markers, a request's nonce, the system tag line, answer
  labels (``instruction_new:``, ``input_new:``, ``Evaluation:``, ``Suggestions:``,
  ``Winner:``) — with the same count over the input items for comparison;
* the structured-output dialect used (``--structured-output auto`` probes the server
  first, as a role does; see ``iterrefine.llm._dialect``).

A real model is slow (SmolLM2-135M on 2 busy cores: ~60-150 tokens/s, one request at a
time), so use few items and concurrency 1-2. This is a benchmark, not a test::

    bash ../shared/tools/realllm/setup.sh 18080
    python benchmarks/real_model.py --base-url http://127.0.0.1:18080/v1 \\
        --model smollm2-135m-instruct --items 8 --structured-output json_object
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
from harness import EXAMPLES, loadavg, machine, now_iso, quiet_logging

from iterrefine.app.run import RunOptions, run_pipeline
from iterrefine.config import Config, Dialect, LLMRoleConfig, PipelineConfig, TaskTokenLimits
from iterrefine.llm.client import LLMClient
from iterrefine.observe.metrics import Metrics

TASK_NAMES = tuple(TaskTokenLimits.__struct_fields__)

#: Text no curated row should contain: the prompt's markers, tag line and answer labels.
SCAFFOLDING = re.compile(
    r"<<<\s*(?:end\s+)?data\b|\[iterrefine task=|\binstruction_new\s*:|\binput_new\s*:"
    r"|\bevaluation\s*:|\bsuggestions\s*:|\bwinner\s*:",
    re.IGNORECASE,
)
TEXT_FIELDS = ("instruction", "input", "output")


class NonceLog:
    """Every nonce the run draws (``secrets.token_hex(4)`` in the ask layer), so that a
    curated row repeating one can be found; wraps the function for this process only."""

    def __init__(self) -> None:
        self.nonces: set[str] = set()
        self._original = secrets.token_hex

    def __enter__(self) -> NonceLog:
        def token_hex(nbytes: int | None = None) -> str:
            value = self._original(nbytes)
            if nbytes == 4:
                self.nonces.add(value)
            return value

        secrets.token_hex = token_hex
        return self

    def __exit__(self, *exc: object) -> None:
        secrets.token_hex = self._original


def scaffolding_in(row: dict[str, Any], nonces: set[str]) -> list[str]:
    """The scaffolding found in a row's text fields (empty when clean)."""
    found: list[str] = []
    for name in TEXT_FIELDS:
        text = str(row.get(name) or "")
        found += [f"{name}: {m.group(0)}" for m in SCAFFOLDING.finditer(text)]
        lowered = text.lower()
        found += [f"{name}: nonce {n}" for n in nonces if n in lowered]
    return found


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


async def resolve_dialect(role: LLMRoleConfig) -> tuple[Dialect, float]:
    """The dialect a role would use (probing for ``auto``) and how long that took."""
    started = time.perf_counter()
    async with LLMClient("strong", role) as client:
        dialect = await client.dialect()
    return dialect, time.perf_counter() - started


def _row_text(item: dict[str, Any]) -> dict[str, Any]:
    """An input record's fields under the curated names (Dolly: context, response)."""
    return {"instruction": item.get("instruction"),
            "input": item.get("input", item.get("context")),
            "output": item.get("output", item.get("response"))}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    records = read_jsonl(Path(args.input))[: args.items]
    role = LLMRoleConfig(
        base_url=args.base_url, model=args.model, max_concurrency=args.concurrency,
        timeout_s=args.timeout_s, max_retries=2, max_tokens=args.max_tokens,
        structured_output=args.structured_output,
    )
    dialect, probe_s = await resolve_dialect(role)
    role = msgspec.structs.replace(role, structured_output=dialect)
    with tempfile.TemporaryDirectory(prefix="iterrefine-real-") as workdir:
        data = Path(workdir, "items.jsonl")
        write_jsonl(data, records)
        config = Config(
            llm={"strong": role, "backbone": role},
            # --max-tokens caps every task: the per-task limits (the paper's 2000-4096)
            # would let a small model ramble for minutes per call.
            pipeline=PipelineConfig(max_rounds=args.max_rounds, parse_retries=args.parse_retries,
                                    high_min_mean_score=args.high_min_mean_score,
                                    max_tokens=TaskTokenLimits(**dict.fromkeys(
                                        TASK_NAMES, args.max_tokens))),
            data_dir=str(Path(workdir, "state")),
        )
        metrics = Metrics(longest_timeout_s=args.timeout_s)
        options = RunOptions(input=data, output=Path(workdir, "curated.jsonl"),
                             timeout_s=args.run_timeout_s)
        load_before = loadavg()
        started = time.perf_counter()
        with NonceLog() as nonce_log:
            result = await run_pipeline(config, options, metrics=metrics)
        wall_s = time.perf_counter() - started
        curated = read_jsonl(result.paths.curated)
    summary = result.summary
    dirty = {row.get("id", str(n)): scaffolding_in(row, nonce_log.nonces)
             for n, row in enumerate(curated)}
    dirty = {key: found for key, found in dirty.items() if found}
    answers: dict[str, dict[str, Any]] = {}
    for task, row in summary["llm_answers"].items():
        asked = sum(row.get(k, 0) for k in ("first_try", "after_reask", "unreadable"))
        readable = row.get("first_try", 0) + row.get("after_reask", 0)
        answers[task] = {
            "first_try": row.get("first_try", 0),
            "after_reask": row.get("after_reask", 0),
            "never": row.get("unreadable", 0),
            "truncated_replies": row.get("truncated", 0),
            "readable_share": round(readable / asked, 3) if asked else None,
        }
    return {
        "benchmark": "real_model",
        "date": now_iso(),
        "machine": machine(),
        "params": {
            "base_url": args.base_url, "model": args.model, "items": len(records),
            "structured_output": args.structured_output, "dialect": dialect,
            "probe_s": round(probe_s, 3), "concurrency": args.concurrency,
            "max_tokens": args.max_tokens, "max_rounds": args.max_rounds,
            "parse_retries": args.parse_retries, "input": args.input,
            "high_min_mean_score": args.high_min_mean_score,
        },
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "wall_time_s": round(wall_s, 1),
        "complete": result.complete,
        "answers": answers,
        "outcomes": {
            "curated": summary["curated"], "rejected": summary["rejected"],
            "dlq": summary["dlq"], "statuses": summary["outcomes"],
            "dlq_reasons": summary["dlq_reasons"],
            "rescore_failures": summary["rescore_failures"],
        },
        "scaffolding_rows": len(dirty),
        "scaffolding_found": dirty,
        "scaffolding_rows_in_input": sum(
            1 for r in records if scaffolding_in(_row_text(r), set())),
        "llm": {role_name: {k: stats.get(k) for k in ("requests", "errors", "completion_tokens",
                                                       "latency_s")}
                for role_name, stats in summary["llm"].items()},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--base-url", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:18080/v1")
    add("--model", required=True, help="model name the server serves")
    add("--items", type=int, default=8, help="first N items of --input (default 8)")
    add("--input", default=str(EXAMPLES / "dolly_sample.jsonl"))
    add("--structured-output", default="auto",
        choices=["json_schema", "json_object", "off", "auto"],
        help="dialect for both roles; auto probes the server (default)")
    add("--concurrency", type=int, default=1, help="requests at once per role (default 1)")
    add("--max-tokens", type=int, default=256, help="max_tokens per call (default 256)")
    add("--high-min-mean-score", type=float, default=11.0,
        help="route threshold; the default 11 sends every usable item to refinement, so "
        "that every task's answers are measured")
    add("--max-rounds", type=int, default=3, help="refinement rounds (default 3)")
    add("--parse-retries", type=int, default=2, help="re-asks of an unreadable answer (2)")
    add("--timeout-s", type=float, default=300.0, help="per-request timeout (300)")
    add("--run-timeout-s", type=float, default=3600.0, help="give up after this long (3600)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    quiet_logging()
    print(json.dumps(asyncio.run(main(parse_args())), indent=2))
    sys.stdout.flush()
