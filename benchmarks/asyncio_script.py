"""The hand-written contender: one asyncio coroutine per item, no framework.

What a skilled user would write instead of iterrefine: read the file, start one
coroutine per item that makes the item's LLM calls one after another (score; if low:
backbone answer, evaluate, then refine → backbone answer → review rounds, align if a
revision won), ``asyncio.gather`` them all, write the results. The calls go through
iterrefine's ask layer (:mod:`iterrefine.tasks.ask`: the same prompts, parsers and
re-asks, on the same openai-based client with the same concurrency limit), so the
LLM work equals iterrefine's and only the execution differs. ``rescore_refined`` is
off, as in ``e2e.py``.

Run by ``e2e.py`` as ``python benchmarks/asyncio_script.py --base-url URL --input FILE``;
prints one ``RESULT {json}`` line (its wall time, start to exit, is measured outside).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import harness

from iterrefine.config import Config, LLMRoleConfig, PipelineConfig
from iterrefine.errors import UnparseableOutput
from iterrefine.llm import LLMRoles
from iterrefine.tasks.ask import (
    ReviewSample,
    ask_aligned,
    ask_answer,
    ask_evaluation,
    ask_revision,
    ask_score,
    ask_verdict,
)
from iterrefine.tasks.prompts import evaluation_text


async def curate(roles: LLMRoles, record: dict[str, Any], config: PipelineConfig,
                 ) -> dict[str, Any]:
    """One item, start to finish: the paper's method as straight-line code."""
    strong, backbone = roles["strong"], roles["backbone"]
    retries = config.parse_retries
    instruction, input_, output = record["instruction"], record.get("input", ""), record["output"]
    out: dict[str, Any] = {"id": record["id"], "quality": None, "status": "rejected",
                           "rounds": 0}
    score = await ask_score(strong, instruction=instruction, input=input_, output=output,
                            parse_retries=retries)
    if not score.usable:
        return out
    if (score.verdict == "high" and score.scores is not None
            and score.scores.mean >= config.high_min_mean_score):
        return {**out, "quality": "high", "status": "high"}
    out["quality"] = "low"
    answer = await ask_answer(backbone, instruction=instruction, input=input_,
                              parse_retries=retries)
    graded = await ask_evaluation(strong, instruction=instruction, input=input_,
                                  reference_output=output, candidate_answer=answer,
                                  parse_retries=retries)
    evaluation = evaluation_text(graded.score, graded.evaluation, graded.suggestions)
    feedback: list[str] = []  # every reviewer's explanation of a loss, oldest first
    winner = None
    for number in range(1, config.max_rounds + 1):
        out["rounds"] = number
        try:
            revision = await ask_revision(
                strong, round=number, instruction=instruction, input=input_,
                reference_output=output, backbone_answer=answer, evaluation=evaluation,
                feedback_set=feedback, parse_retries=retries)
        except UnparseableOutput as exc:
            feedback.append(f"the refiner's answer could not be read: {exc}")
            continue
        revised = await ask_answer(backbone, instruction=revision.instruction,
                                   input=revision.input, parse_retries=retries)
        try:
            verdict = await ask_verdict(
                strong, round=number,
                a=ReviewSample(instruction=instruction, input=input_, answer=answer),
                b=ReviewSample(instruction=revision.instruction, input=revision.input,
                               answer=revised),
                parse_retries=retries)
        except UnparseableOutput as exc:
            feedback.append(f"the reviewer's answer could not be read: {exc}")
            continue
        if verdict.winner in ("B", "Tie"):
            winner = revision
            break
        feedback.append(verdict.explanation)
    if winner is None:
        out["status"] = "unrefined" if config.exhausted_policy == "keep_original" else "dropped"
        return out
    with contextlib.suppress(UnparseableOutput):  # the revision stands without it
        await ask_aligned(strong, original_instruction=instruction, original_input=input_,
                          original_output=output, revised_instruction=winner.instruction,
                          revised_input=winner.input, parse_retries=retries)
    out["status"] = "refined"
    return out


async def main_async(args: argparse.Namespace, records: list[dict[str, Any]],
                     ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    pipeline = PipelineConfig(**json.loads(args.pipeline))
    role = {"base_url": args.base_url, "max_concurrency": args.concurrency,
            "timeout_s": 60.0, "max_retries": 8}
    config = Config(pipeline=pipeline, llm={
        "strong": LLMRoleConfig(model="sim-strong", **role),
        "backbone": LLMRoleConfig(model="sim-backbone", **role),
    })
    async with LLMRoles(config) as roles:
        started = time.monotonic()
        items = await asyncio.gather(*(curate(roles, r, pipeline) for r in records))
        done = time.monotonic()
    return {"t_start": started, "t_done": done, "wall_inside_s": round(done - started, 4),
            "items": items}, items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--pipeline", default="{}", help="PipelineConfig fields as JSON")
    parser.add_argument("--concurrency", type=int, default=256, help="per role")
    args = parser.parse_args()
    harness.quiet_logging()
    records = [json.loads(line) for line in Path(args.input).read_text().splitlines()
               if line.strip()]
    result, items = asyncio.run(main_async(args, records))
    Path(args.output).write_text("".join(json.dumps(item) + "\n" for item in items))
    harness.emit_result({**result, **harness.self_memory()})


if __name__ == "__main__":
    main()
