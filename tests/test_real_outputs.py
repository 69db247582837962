"""Real outputs pinned in CI: a SmolLM2-135M run, replayed through the pipeline.

``tests/data/real_smollm2_*.jsonl`` holds every request and answer of a real run
(``python benchmarks/real_model.py --serve smollm2 ... --record FILE``, then
``python benchmarks/real_model.py --pin FILE RESULT.json OUT``): its first line the
run's parameters and outcomes, then one exchange a line. SmolLM2's outputs are
Apache-2.0, like the model.

Two pins:

* every recorded answer reads (or does not) with today's parsers exactly as it did in
  the run — a parser change that breaks on real output fails here;
* the whole pipeline, served the recorded answers by a scripted endpoint keyed by request
  (task, round, data block, re-ask or not; repeats answered in recorded order), ends
  as many items each way (curated high / refined / unrefined, rejected, DLQ) as the real
  run did.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict, deque
from pathlib import Path
from typing import Any

import pytest

from iterrefine.config import Config, PipelineConfig, TaskTokenLimits
from iterrefine.errors import UnparseableOutput
from iterrefine.sim.prompt import parse_prompt
from iterrefine.tasks.ask import PARSERS
from iterrefine.testing import Reply, ScriptedLLM, ScriptedRequest, run_records

DATA = Path(__file__).parent / "data"
RECORDINGS = sorted(DATA.glob("real_smollm2_*.jsonl"))
_REASK = "could not be read"


@pytest.mark.unit
def test_a_real_recording_is_pinned() -> None:
    """The tests below parametrize over the recordings: without one they would collect
    nothing and pass vacuously, so a missing recording fails here instead."""
    assert RECORDINGS, f"no real_smollm2_*.jsonl recording in {DATA.name}/"


def _load(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def _message(body: dict[str, Any], role: str) -> str:
    return next((str(m.get("content", "")) for m in body.get("messages", [])
                 if m.get("role") == role), "")


def request_key(body: dict[str, Any]) -> str:
    """What identifies a request across runs: not its nonce."""
    system, user = _message(body, "system"), _message(body, "user")
    prompt = parse_prompt(system, user)
    return json.dumps([prompt.task, prompt.round, prompt.data, _REASK in system],
                      sort_keys=True)


def _reply(exchange: dict[str, Any]) -> Reply:
    # A stream the loop guard closed is replayed as what it was: an answer cut short,
    # which the ask layer then recognises as a loop in the text.
    reason = "length" if exchange["cut_by_client"] else exchange["finish_reason"] or "stop"
    return Reply(exchange["text"], reason)


@pytest.mark.unit
@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
def test_real_answers_read_as_they_did(path: Path) -> None:
    """Each recorded SmolLM2 answer parses (or fails) as in the recorded run."""
    _, exchanges = _load(path)
    assert len(exchanges) >= 10
    for exchange in exchanges:
        task = exchange["task"]
        if task not in PARSERS or exchange["readable"] is None:
            continue
        try:
            PARSERS[task](exchange["read_text"], None)
            readable = True
        except UnparseableOutput:
            readable = False
        assert readable == exchange["readable"], (task, exchange["read_text"][:300])


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
async def test_the_pipeline_replayed_on_real_answers_ends_items_as_the_run_did(
    path: Path,
) -> None:
    """The recorded answers, served by request, give the recorded outcomes per item."""
    header, exchanges = _load(path)
    queues: dict[str, deque[Reply]] = defaultdict(deque)
    for exchange in exchanges:
        queues[request_key(exchange["request"])].append(_reply(exchange))
    missing: list[str] = []

    def answer(request: ScriptedRequest) -> Reply:
        key = request_key(dict(request.body))
        if not queues[key]:
            missing.append(key[:200])
            return Reply("")  # unreadable: the test fails on ``missing`` below
        return queues[key].popleft()

    tasks = {e["task"] for e in exchanges} | {"score", "answer", "evaluate", "refine",
                                                 "review", "align"}
    pipeline = _pipeline(header["params"])
    async with ScriptedLLM(dict.fromkeys(tasks, answer)) as llm:
        result = await run_records(header["records"], llm=llm,
                                   config=Config(pipeline=pipeline))
    assert not missing, missing
    got = Counter("dlq" if t.item is None else "refined_unconverged"
                  if t.item.status == "refined" and t.item.converged is False else t.item.status
                  for t in result.terminals.values())
    assert dict(got) == header["outcomes"]


def _pipeline(params: dict[str, Any]) -> PipelineConfig:
    """The recorded run's pipeline settings (its flat --max-tokens for every task)."""
    return PipelineConfig(
        max_rounds=params["max_rounds"], parse_retries=params["parse_retries"],
        high_min_mean_score=params["high_min_mean_score"],
        max_tokens=TaskTokenLimits(**dict.fromkeys(TaskTokenLimits.__struct_fields__,
                                                   params["max_tokens"])))
