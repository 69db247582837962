"""Replay: re-feed a topic range into the pipeline; the newest revision replaces old results."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from iterrefine.app.run import RunOptions, run_pipeline
from iterrefine.config import Config
from iterrefine.consumers import PIPELINE, build_stages
from iterrefine.errors import ConfigError, ValidationError
from iterrefine.graph.context import PipelineContext
from iterrefine.item.model import Item, Judgement, Provenance, Round, Scores
from iterrefine.item.records import new_item, original_from_record
from iterrefine.kafka.clients import read_to_end
from iterrefine.kafka.topics import TopicNames
from iterrefine.observe.metrics import Metrics
from iterrefine.sim import SimServer
from iterrefine.tools.replay import ReplayRange, parse_time_ms, replay, resolve_target

from .helpers import alpaca, committed_vs_end, produce, unique_config
from .pipeline_support import (
    newest,
    pipeline,
    pipeline_config,
    sample_records,
    start_watcher,
    wait_for_ids,
    write_jsonl,
)

ROOT = Path(__file__).parent.parent




@pytest.mark.slow
async def test_replaying_raw_rescores_everything_under_the_new_prompt_version(
    broker: str, sim: SimServer, tmp_path: Path
) -> None:
    """Replay of items.raw after a prompt change: one row per item, all of the new version."""
    config = pipeline_config(broker, sim)
    records: list[Any] = [*sample_records(40), "{not json", '{"prompt": "x"}']
    first = await run_pipeline(config, RunOptions(
        input=write_jsonl(tmp_path / "in.jsonl", records), output=tmp_path / "first.jsonl",
        timeout_s=120))
    assert first.complete and len(first.ingest.ids) == 42
    score_group = f"{config.kafka.topic_prefix}score"
    committed_before, _ = await committed_vs_end(config, broker, score_group, "items.raw")

    watcher = await start_watcher(config, broker)
    try:
        started_ms = int(time.time() * 1000)
        report = await replay(config.kafka, broker, "items.raw", ReplayRange(from_offset=0),
                              graph=PIPELINE)
        assert (report.read, report.sent, report.stage) == (42, 42, "score")
        assert set(report.ids) == set(first.ingest.ids)
        # Group-less: the live score group's committed offsets did not move.
        committed_after, _ = await committed_vs_end(config, broker, score_group, "items.raw")
        assert committed_after == committed_before
        async with pipeline(config, broker, prompt_version="v-replayed"):
            await wait_for_ids(watcher, report.ids, timeout_s=90)
    finally:
        await watcher.stop()

    chosen = await newest(config, broker)
    assert set(chosen.by_id) == set(first.ingest.ids)  # one row per item, nothing new or lost
    assert chosen.duplicates >= 42  # every first-run result was superseded
    for terminal in chosen.by_id.values():
        assert terminal.revision >= started_ms, terminal.id
        if terminal.item is not None:
            assert terminal.item.provenance.prompt_version == "v-replayed"
    assert sorted(t.meta["reason"] for t in chosen.by_id.values() if t.outcome == "dlq") == [
        "not_json", "unknown_shape"]


@pytest.mark.slow
async def test_replay_cli_realigns_refined_items_only(
    broker: str, sim: SimServer, tmp_path: Path
) -> None:
    """`replay --topic items.curated --to align` re-aligns refined items and leaves the rest."""
    config = pipeline_config(broker, sim)
    first = await run_pipeline(config, RunOptions(
        input=write_jsonl(tmp_path / "in.jsonl", sample_records(40)),
        output=tmp_path / "first.jsonl", timeout_s=120))
    assert first.complete
    before = await newest(config, broker)
    refined = {i for i, t in before.by_id.items() if t.item and t.item.status == "refined"}
    curated = {i for i, t in before.by_id.items() if t.outcome == "curated"}
    assert refined and curated - refined, "the simulator should give both kinds"

    watcher = await start_watcher(config, broker)
    try:
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "iterrefine.cli", "replay", "--topic", "items.curated",
             "--from-offset", "0", "--to", "align", "--bootstrap", broker,
             "--topic-prefix", config.kafka.topic_prefix, "--log-level", "warning"],
            capture_output=True, text=True, check=False, timeout=60, cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr
        assert f"replayed {len(refined)} of" in result.stdout
        assert "stage align" in result.stdout and "not_converged" in result.stdout
        async with pipeline(config, broker, prompt_version="v-realigned"):
            await wait_for_ids(watcher, dict.fromkeys(refined), timeout_s=60)
    finally:
        await watcher.stop()

    after = await newest(config, broker)
    assert set(after.by_id) == set(before.by_id)
    for item_id, terminal in after.by_id.items():
        assert terminal.item is not None
        if item_id in refined:
            assert terminal.revision > before.by_id[item_id].revision
            assert terminal.item.provenance.prompt_version == "v-realigned"
            assert terminal.item.status == "refined" and terminal.item.output_aligned
            # Only the alignment was redone: the refinement rounds are the first run's.
            assert terminal.item.rounds == before.by_id[item_id].item.rounds  # type: ignore[union-attr]
        else:
            assert terminal.revision == before.by_id[item_id].revision


async def test_since_until_select_by_record_time_and_a_replay_never_rereads_itself(
    kafka: str,
) -> None:
    """--since/--until pick the burst in between (offsets_for_times on Tansu + time filter),
    on both brokers (noida-db answers time lookups as Kafka does)."""
    broker = kafka
    config = unique_config()
    names = TopicNames(config.kafka.topic_prefix)
    bursts = [[alpaca(100 * b + i) for i in range(20)] for b in range(3)]
    keys = [[f"item-{100 * b + i}".encode() for i in range(20)] for b in range(3)]
    marks = []
    for values, burst_keys in zip(bursts, keys, strict=True):
        marks.append(int(time.time() * 1000))
        await produce(config, broker, names["items.raw"], values, keys=burst_keys)
        await asyncio.sleep(0.3)
    middle = ReplayRange(since_ms=marks[1], until_ms=marks[2])
    dry = await replay(config.kafka, broker, "items.raw", middle, graph=PIPELINE, dry_run=True)
    assert set(dry.ids) == {k.decode() for k in keys[1]} and dry.sent == 20

    # Replaying items.raw into score writes to items.raw itself: it stops at the old end.
    report = await replay(config.kafka, broker, names["items.raw"],
                          ReplayRange(since_ms=marks[1]), graph=PIPELINE)
    assert report.sent == 40 and report.skipped == {}
    records = await read_to_end(config.kafka, broker, [names["items.raw"]])
    assert len(records) == 100
    replayed = [r for r in records if any(k == "iterrefine.replay.source" for k, _ in r.headers)]
    assert sorted(r.value for r in replayed) == sorted(bursts[1] + bursts[2])

    future = await replay(config.kafka, broker, "items.raw",
                          ReplayRange(since_ms=int(time.time() * 1000) + 60_000),
                          graph=PIPELINE, dry_run=True)
    assert future.read == 0 and future.sent == 0  # Tansu's "no offset" answer is not offset 0


def _item(**changes: Any) -> Item:
    original, _ = original_from_record({"id": "x", "instruction": "Q?", "output": "A."})
    scores = Scores(correctness=4, completeness=4, clarity=4, compliance=4, reasoning=4)
    judged = new_item(original, item_id="x", revision=5).with_changes(judgement=Judgement(
        usable=True, reason="", scores=scores, verdict="low", justification="meh"))
    return judged.with_changes(**changes)


@pytest.mark.unit
def test_each_stage_reset_restores_what_the_stage_expects() -> None:
    """Each target stage gets the item as it would arrive there, with later state cleared."""
    lost = Round(number=1, instruction="Q1?", input="", feedback=None, backbone_answer="a",
                 winner="A", explanation="worse")
    won = Round(number=2, instruction="Q2?", input="", feedback="worse", backbone_answer="b",
                winner="B", explanation="better")
    done = _item(quality="low", rounds=(lost, won), round=2, status="refined",
                 instruction="Q2?", output="A aligned.", output_aligned=True)

    aligned = _reset(done, "align", 99)
    assert (aligned.revision, aligned.status, aligned.instruction) == (99, "pending", "Q2?")
    assert aligned.output == "A." and not aligned.output_aligned
    reviewed = _reset(done, "review", 99)
    assert reviewed.rounds[-1] == msgspec.structs.replace(won, backbone_answer="", winner="none",
                                                          explanation="")
    assert reviewed.instruction == "Q?" and reviewed.feedback == "worse"
    refined = _reset(done, "refine", 99)
    assert (refined.rounds, refined.round, refined.evaluation) == ((), 0, None)
    routed = _reset(done, "route", 99)
    assert routed.quality is None and routed.judgement == done.judgement

    for stage, item, reason in [
        ("align", _item(status="high", quality="high"), "not_converged"),
        ("align", _item(rounds=(lost,), round=1), "not_converged"),
        ("review", _item(), "no_revision"),
        ("route", _item(judgement=None), "not_scored"),
    ]:
        with pytest.raises(ValidationError) as raised:
            _reset(item, stage, 99)
        assert raised.value.reason == reason


@pytest.mark.unit
def test_reset_for_align_keeps_an_exhausted_items_last_revision() -> None:
    """Replaying align: a kept-but-lost revision (keep_last_revision) is realigned as such."""
    lost = [Round(number=n, instruction=f"Q{n}?", input="", feedback=None, winner="A",
                  explanation="worse") for n in (1, 2)]
    failed = Round(number=3, instruction="Q?", input="", feedback=None, revision_failed=True)
    done = _item(quality="low", rounds=(*lost, failed), round=3, status="refined",
                 converged=False, instruction="Q2?", output="A aligned.", output_aligned=True,
                 alignment_mode="complete")
    again = _reset(done, "align", 99)
    assert (again.instruction, again.converged, again.alignment_mode) == ("Q2?", False, None)
    assert again.status == "pending" and "round 2" in again.status_reason
    with pytest.raises(ValidationError):  # kept as the original: nothing to align
        _reset(done.with_changes(status="unrefined"), "align", 99)


@pytest.mark.unit
def test_targets_and_times_are_checked_with_the_fix_in_the_message() -> None:
    """Terminal topics need --to; raw records only go to score; times must be ISO 8601."""
    names = TopicNames("iterrefine.")
    assert resolve_target(PIPELINE, names, "iterrefine.items.review", None) == (
        "items.review", "review")
    assert resolve_target(PIPELINE, names, "items.curated", "align") == ("items.curated", "align")
    with pytest.raises(ConfigError, match="--to STAGE"):
        resolve_target(PIPELINE, names, "items.curated", None)
    with pytest.raises(ConfigError, match="--to score"):
        resolve_target(PIPELINE, names, "items.raw", "align")
    with pytest.raises(ConfigError, match="unknown topic"):
        resolve_target(PIPELINE, names, "items.nope", None)
    assert parse_time_ms("1970-01-01T00:00:01Z") == 1000
    assert parse_time_ms("1970-01-01T02:00:01+02:00") == 1000
    assert parse_time_ms("1970-01-01T00:00:01") == 1000  # no zone: UTC
    with pytest.raises(ConfigError, match="ISO 8601"):
        parse_time_ms("yesterday")


@pytest.mark.unit
def test_built_stages_read_the_topics_the_graph_declares() -> None:
    """The stages built from the graph read what replay and status take from it."""
    ctx = PipelineContext(Config().pipeline, {}, Metrics(), Provenance())
    assert {s.name: s.input_topic for s in build_stages(ctx)} == PIPELINE.inputs()


def _reset(item: Item, stage: str, revision: int) -> Item:
    """``item`` replayed into ``stage``, by that stage's own reset rule."""
    reset = PIPELINE[stage].reset
    assert reset is not None
    return reset(item, revision)


@pytest.mark.unit
def test_replay_help_says_answers_come_from_the_cache_unless_refresh(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`replay --help` tells that a replay reuses cached answers unless --cache refresh."""
    from iterrefine.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser("replay").parse_args(["replay", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "answers come from the workers' LLM response cache unless they run with " \
           "--cache refresh" in text
