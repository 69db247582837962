"""How well a trial run estimates the whole input's calls, tokens and money.

On the 120-record sample (``examples/dolly_sample.jsonl``) and on a 1,200-record input
(each sample record followed by nine variants of it, their instructions marked
``(variant K)`` so that the simulator decides each afresh: its decisions are hashes of
the text; near-copies side by side, as augmented data sets hold them), one full run
is the truth; then a 10% trial per seed (``--sample n --seed S``, S = 1..10) gives the
summary's estimate and its 90% interval. All runs on the built-in simulator (5 ms
latency, half the items judged low, a revision losing its review half the time), with
prices (strong 3/15, backbone 0.2/0.6 per million tokens), no response cache.

Contenders, each judged against the same full run:

* **per-item estimate** (what ``iterrefine run --sample`` reports): N × the mean cost of
  a trial item (each item's own calls and tokens, whatever it went through) + the calls
  of no item, with a 90% t-interval.
* **first N × scale** (the floor: what ``--limit`` gave before): the first n records'
  totals × N/n. One run: it has no seed.
* **full run** (the ceiling): exact by construction, at ten times a trial's cost.

A trial *holds* when its calls, prompt tokens and completion tokens are all within ±15%
of the full run's. Reported per input: how many of the 10 seeds hold, each quantity's
errors, and how many 90% intervals cover the truth.

Run ``python benchmarks/trial_estimate.py [--seeds 10] [--out FILE]``; prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import harness

from iterrefine.app.run import RunOptions, run_pipeline
from iterrefine.broker.embedded import EmbeddedBroker
from iterrefine.config import load_config
from iterrefine.io.inputs import InputSpec
from iterrefine.sim import SimConfig

SIM = SimConfig(latency_ms=5.0, jitter_ms=2.0, capacity=64, low_share=0.5, lose_prob=0.5,
                retry_after_s=0.2)
PRICES = {"strong": {"price_in_per_mtok": 3.0, "price_out_per_mtok": 15.0},
          "backbone": {"price_in_per_mtok": 0.2, "price_out_per_mtok": 0.6}}
CHECKED = ("calls", "prompt_tokens", "completion_tokens")
QUANTITIES = (*CHECKED, "money")
TOLERANCE = 0.15


async def _run(bootstrap: str, workdir: Path, source: Path, spec: InputSpec) -> dict[str, Any]:
    config = load_config(None, {
        "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": f"b{uuid.uuid4().hex[:8]}."},
        "llm": PRICES, "cache": {"mode": "off"}, "data_dir": str(workdir / "state")})
    out = workdir / f"out-{uuid.uuid4().hex[:6]}.jsonl"
    result = await run_pipeline(config, RunOptions(input=source, output=out, sim=SIM,
                                                   input_spec=spec, timeout_s=900))
    if not result.complete:
        raise RuntimeError(f"run on {source.name} did not finish")
    return result.summary


def _errors(estimate: dict[str, Any], truth: dict[str, Any]) -> dict[str, float]:
    return {q: round(estimate[q] / truth[q] - 1, 4) for q in QUANTITIES}


def _holds(errors: dict[str, float]) -> bool:
    return all(abs(errors[q]) <= TOLERANCE for q in CHECKED)


async def _scenario(bootstrap: str, workdir: Path, name: str, source: Path, total: int,
                    seeds: int) -> dict[str, Any]:
    started = time.perf_counter()
    n = total // 10
    full = (await _run(bootstrap, workdir, source, InputSpec(str(source))))["cost"]["run"]
    truth = {q: full[q] for q in QUANTITIES}
    first = (await _run(bootstrap, workdir, source, InputSpec(str(source), limit=n)))["cost"]
    first_errors = _errors(first["estimate_full_input"], truth)
    trials = []
    for seed in range(1, seeds + 1):
        cost = (await _run(bootstrap, workdir, source,
                           InputSpec(str(source), sample=n, seed=seed)))["cost"]
        estimate = cost["estimate_full_input"]
        errors = _errors(estimate, truth)
        interval = estimate["interval_90"]
        trials.append({
            "seed": seed, "estimate": {q: estimate[q] for q in QUANTITIES}, "errors": errors,
            "holds": _holds(errors), "trial": estimate["trial"],
            "interval_90": interval,
            "covered": {q: interval[q][0] <= truth[q] <= interval[q][1] for q in QUANTITIES},
        })
    return {
        "input": name, "items": total, "trial_items": n, "truth": truth,
        "per_item_estimate": {
            "seeds_within_15pct": sum(t["holds"] for t in trials), "seeds": seeds,
            "max_abs_error": {q: max(abs(t["errors"][q]) for t in trials) for q in QUANTITIES},
            "median_abs_error": {q: harness.median([abs(t["errors"][q]) for t in trials])
                                 for q in QUANTITIES},
            "interval_covers": {q: sum(t["covered"][q] for t in trials) for q in QUANTITIES},
            "trials": trials,
        },
        "first_n_scaled": {"errors": first_errors, "holds": _holds(first_errors),
                           "seeds_within_15pct": seeds if _holds(first_errors) else 0},
        "full_run": {"errors": dict.fromkeys(QUANTITIES, 0.0), "cost_vs_trial": 10},
        "seconds": round(time.perf_counter() - started, 1),
    }


def _inputs(workdir: Path) -> list[tuple[str, Path, int]]:
    rows = [json.loads(line) for line in (harness.EXAMPLES / "dolly_sample.jsonl").open()]
    big = [{**row, "instruction": row["instruction"] + ("" if k == 0 else f" (variant {k})")}
           for row in rows for k in range(10)]
    return [("dolly_sample_120", harness.EXAMPLES / "dolly_sample.jsonl", len(rows)),
            ("dolly_variants_1200", harness.write_jsonl(workdir / "variants.jsonl", big),
             len(big))]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    load_before = harness.loadavg()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        workdir = Path(tmp)
        scenarios = [await _scenario(broker.bootstrap_servers, workdir, name, path, total,
                                     args.seeds)
                     for name, path, total in _inputs(workdir)]
    return {
        "benchmark": "trial_estimate", "date": harness.now_iso(), "machine": harness.machine(),
        "load_before": load_before, "load_after": harness.loadavg(),
        "parameters": {"trial_share": 0.1, "seeds": args.seeds, "tolerance": TOLERANCE,
                       "checked": list(CHECKED), "sim": {"latency_ms": SIM.latency_ms,
                       "low_share": SIM.low_share, "lose_prob": SIM.lose_prob},
                       "prices_per_mtok": PRICES},
        "scenarios": scenarios,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    harness.quiet_logging()
    result = asyncio.run(main_async(args))
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
