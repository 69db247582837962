"""The batch baseline: the paper's method run the way its public scripts run it.

The authors' scripts (github.com/surihuhang/From-Selection-to-Refinement--Iterative-
Optimization-for-Instruction-Data: ``Select/Classifing_Scoring.py``,
``Refine/step1.py``, ``step2.py``, ``step3.py``) process a whole file per script, one
script after the other, each with a fixed ``ThreadPoolExecutor`` of synchronous
OpenAI calls (one thread per API key in their key list):

==========================  =======  ====================================================
phase (their script)         threads  what one thread does for one item
==========================  =======  ====================================================
score (Classifing_Scoring)   27       the judge scores the item
answer (step1)               18       the backbone answers the instruction
evaluate (step2)             54       the strong model grades that answer
refine ⇄ review + align      36       rounds one after another: refine, backbone answer,
(step3, step4–6 inlined)              pairwise judge; then align if a revision won
==========================  =======  ====================================================

Each phase starts when the previous one has finished every item (a barrier: the next
script reads the previous one's output file). This module reproduces that execution
shape — phases, barriers, pool sizes, per-item sequential rounds — with iterrefine's
prompts (:func:`iterrefine.tasks.prompts.build_messages`) and parsers
(:mod:`iterrefine.tasks.parsing`) and the sync ``openai.OpenAI`` client, so that it makes
exactly the LLM calls iterrefine makes (same tasks, same data, same re-asks on an
unreadable answer, no rescore) and only the execution differs.

Run by ``e2e.py`` as ``python benchmarks/baseline.py --base-url URL --input FILE``;
prints one ``RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import harness
import openai

from iterrefine.config import PipelineConfig
from iterrefine.errors import UnparseableOutput
from iterrefine.tasks.parsing import (
    AlignedAnswer,
    EvaluationAnswer,
    RevisionAnswer,
    ScoreAnswer,
    VerdictAnswer,
    clean_answer,
    parse_aligned,
    parse_evaluation,
    parse_revision,
    parse_score,
    parse_verdict,
)
from iterrefine.tasks.prompts import build_messages, evaluation_text

#: Thread pool sizes of the authors' scripts (their API key lists).
POOLS = {"score": 27, "answer": 18, "evaluate": 54, "refine_loop": 36}

T = TypeVar("T")


@dataclass
class Record:
    """One item's state through the phases (what their JSON files carry from step to step)."""

    id: str
    instruction: str
    input: str
    output: str
    score: ScoreAnswer | None = None
    quality: str | None = None
    backbone_answer: str = ""
    evaluation: EvaluationAnswer | None = None
    rounds: int = 0
    revision: RevisionAnswer | None = None
    status: str = "pending"
    aligned_output: str | None = None
    calls: int = 0


class Asker:
    """Synchronous chat calls for the worker threads (one shared, thread-safe client)."""

    def __init__(self, base_url: str, *, parse_retries: int, timeout_s: float = 60.0) -> None:
        self.client = openai.OpenAI(base_url=base_url, api_key="not-needed", timeout=timeout_s,
                                    max_retries=8)
        self.parse_retries = parse_retries

    def ask(self, record: Record, model: str, task: str, data: dict[str, Any],
            parse: Callable[[str], T], *, round: int | None = None) -> T:
        last: UnparseableOutput | None = None
        for _ in range(1 + self.parse_retries):
            messages = build_messages(task, data, round=round, reask=last is not None)
            reply = self.client.chat.completions.create(
                model=model, messages=messages,  # type: ignore[arg-type]  # plain dicts
                temperature=0.0, max_tokens=1024,
            )
            record.calls += 1
            try:
                return parse(reply.choices[0].message.content or "")
            except UnparseableOutput as exc:
                last = exc
        assert last is not None
        raise last

    def close(self) -> None:
        self.client.close()


def _phase(name: str, threads: int, records: Sequence[Record],
           work: Callable[[Record], None], timings: list[dict[str, Any]]) -> None:
    """One script of theirs: every record through ``work`` on a fixed pool, then a barrier."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name) as pool:
        list(pool.map(work, records))  # re-raises the first failure, as a crash of the script
    timings.append({"phase": name, "threads": threads, "items": len(records),
                    "t_start": started, "seconds": round(time.monotonic() - started, 3)})


def run_baseline(asker: Asker, records: list[Record], config: PipelineConfig,
                 pools: dict[str, int] = POOLS) -> list[dict[str, Any]]:
    timings: list[dict[str, Any]] = []

    def score(r: Record) -> None:
        r.score = asker.ask(r, "sim-strong", "score",
                            {"instruction": r.instruction, "input": r.input, "output": r.output},
                            parse_score)
        scores = r.score.scores
        if not r.score.usable:
            r.status = "rejected"
        elif (r.score.verdict == "high" and scores is not None
              and scores.mean >= config.high_min_mean_score):
            r.quality, r.status = "high", "high"
        else:
            r.quality = "low"

    def answer(r: Record) -> None:
        r.backbone_answer = asker.ask(r, "sim-backbone", "answer",
                                      {"instruction": r.instruction, "input": r.input},
                                      clean_answer)

    def evaluate(r: Record) -> None:
        r.evaluation = asker.ask(r, "sim-strong", "evaluate", {
            "instruction": r.instruction, "input": r.input, "reference_output": r.output,
            "candidate_answer": r.backbone_answer,
        }, parse_evaluation)

    def refine_loop(r: Record) -> None:
        assert r.evaluation is not None
        evaluation = evaluation_text(r.evaluation.score, r.evaluation.evaluation,
                                     r.evaluation.suggestions)
        feedback: str | None = None
        for number in range(1, config.max_rounds + 1):
            r.rounds = number
            data: dict[str, Any] = {
                "instruction": r.instruction, "input": r.input, "reference_output": r.output,
                "backbone_answer": r.backbone_answer, "evaluation": evaluation}
            if number > 1 and feedback is not None:
                data["feedback_set"] = [feedback]
            try:
                revision = asker.ask(r, "sim-strong", "refine", data, parse_revision,
                                     round=number)
            except UnparseableOutput as exc:
                feedback = f"the refiner's answer could not be read: {exc}"
                continue
            revised_answer = asker.ask(r, "sim-backbone", "answer",
                                       {"instruction": revision.instruction,
                                        "input": revision.input}, clean_answer)
            a = {"instruction": r.instruction, "input": r.input, "answer": r.backbone_answer}
            b = {"instruction": revision.instruction, "input": revision.input,
                 "answer": revised_answer}
            try:
                verdict: VerdictAnswer = asker.ask(r, "sim-strong", "review", {"A": a, "B": b},
                                                   parse_verdict, round=number)
            except UnparseableOutput as exc:
                feedback = f"the reviewer's answer could not be read: {exc}"
                continue
            if verdict.winner in ("B", "Tie"):
                r.revision = revision
                break
            feedback = verdict.explanation
        if r.revision is None:
            r.status = "unrefined" if config.exhausted_policy == "keep_original" else "dropped"
            return
        try:
            aligned: AlignedAnswer = asker.ask(r, "sim-strong", "align", {
                "original_instruction": r.instruction, "original_input": r.input,
                "original_output": r.output, "revised_instruction": r.revision.instruction,
                "revised_input": r.revision.input,
            }, parse_aligned)
            r.aligned_output = aligned.output
        except UnparseableOutput:
            r.aligned_output = None
        r.status = "refined"

    _phase("score", pools["score"], records, score, timings)
    low = [r for r in records if r.quality == "low"]
    _phase("answer", pools["answer"], low, answer, timings)
    _phase("evaluate", pools["evaluate"], low, evaluate, timings)
    _phase("refine_loop", pools["refine_loop"], low, refine_loop, timings)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="OpenAI-compatible endpoint (/v1)")
    parser.add_argument("--input", type=Path, required=True, help="Alpaca records, JSON lines")
    parser.add_argument("--pipeline", default="{}", help="PipelineConfig fields as JSON")
    args = parser.parse_args()
    config = PipelineConfig(**json.loads(args.pipeline))
    rows = [json.loads(line) for line in args.input.read_text().splitlines() if line.strip()]
    records = [Record(id=row["id"], instruction=row["instruction"], input=row.get("input", ""),
                      output=row["output"]) for row in rows]
    asker = Asker(args.base_url, parse_retries=config.parse_retries)
    try:
        t_start = time.monotonic()
        cpu_start = time.process_time()
        timings = run_baseline(asker, records, config)
        t_done = time.monotonic()
        cpu = time.process_time() - cpu_start
    finally:
        asker.close()
    harness.emit_result({
        "t_start": t_start,
        "t_done": t_done,
        "wall_s": round(t_done - t_start, 4),
        "cpu_s": round(cpu, 4),
        "pools": POOLS,
        "phases": timings,
        "items": [{"id": r.id, "status": r.status, "quality": r.quality, "rounds": r.rounds,
                   "calls": r.calls} for r in records],
        **harness.self_memory(),
    })


if __name__ == "__main__":
    main()
