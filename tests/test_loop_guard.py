"""Answers that end: the loop detector, the ask layer's handling of a looping answer, and
the streaming guard that closes a request at a loop (httpx2.MockTransport, real openai)."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from structlog.testing import capture_logs

from iterrefine.config import LLMRoleConfig
from iterrefine.llm import LLMClient, loops
from iterrefine.llm.chat import ChatOptions
from iterrefine.llm.loops import MIN_SPAN, JsonEnd, LoopWatch, close_json, loop_cut
from iterrefine.observe.metrics import Metrics
from iterrefine.retry import Backoff
from iterrefine.tasks.ask import LOOP_REASK_PENALTY, ask
from iterrefine.tasks.limits import fit_aligned, fit_revision

# What SmolLM2-135M wrote for a score request in json_schema mode (recorded on xllamacpp,
# cut at max_tokens=320): the reason field repeats one clause until the limit.
LOOPING_REASON = (
    '{\n  "usable": true,\n  "reason": "The example is not usable when the instruction has '
    "no real task or cannot be understood, when the example is harmful to teaching, "
    + "when the example is not suitable for the instruction, " * 25
    + "when the example"
)
LOOPING_ANSWER = (
    "Virgin Australia started operating on 31 August 2000.\n"
    + "It started operating as Virgin Blue with two aircraft on a single route.\n" * 12
)
VERDICT = "Winner: B\nExplanation: B states the expected format."
REVIEW_DATA = {"A": {"instruction": "Sum 2+2.", "input": "", "answer": "4"},
               "B": {"instruction": "Add 2 and 2; reply with the number.", "input": "",
                     "answer": "4"}}


# ---------------------------------------------------------------- the detector


@pytest.mark.unit
def test_a_repeated_sentence_is_cut_after_its_first_copy() -> None:
    """A text ending in copies of one line is cut so that the line stays once, whole."""
    cut = loop_cut(LOOPING_ANSWER)
    assert cut is not None
    assert LOOPING_ANSWER[:cut] == (
        "Virgin Australia started operating on 31 August 2000.\n"
        "It started operating as Virgin Blue with two aircraft on a single route.")


@pytest.mark.unit
def test_a_run_of_newlines_is_a_loop() -> None:
    """Whitespace until the limit (a JSON mode without a grammar) is a loop too."""
    text = '{"winner": "B", "explanation": "ok"}' + "\n" * 300
    cut = loop_cut(text)
    assert cut is not None and text[:cut].rstrip() == '{"winner": "B", "explanation": "ok"}'


@pytest.mark.unit
def test_near_copies_are_a_loop() -> None:
    """Copies that vary a word (as a frequency penalty makes them) are recognised."""
    lines = [f"A place where the {w} fury reigns, a place of endless sorrow and of light."
             for w in ("sea", "ocean", "storm", "wave", "tide", "sea") * 8]
    text = "The poem begins here with an opening line. " + " ".join(lines)
    cut = loop_cut(text)
    assert cut is not None and cut < len(text) // 3


@pytest.mark.unit
def test_ordinary_long_text_is_not_a_loop() -> None:
    """Prose, numbered lists, code and tables with repeated shapes are left alone."""
    listing = "\n".join(f"{n}. Step {n}: add {n * 7} grams of item{n} and stir." for n in
                        range(1, 60))
    code = "\n".join(f"    self.assertEqual(parse({n!r}), {n * n})" for n in range(80))
    table = "| name | value |\n|---|---|\n" + "\n".join(f"| row{n} | {n * 3} |"
                                                      for n in range(80))
    prose = " ".join(f"Sentence {n} talks about topic{n % 17} and detail{n}." for n in range(90))
    for text in (listing, code, table, prose, "short"):
        assert loop_cut(text) is None, text[:60]


# What SmolLM2-135M answered to "Who was Kyle Van Zyl playing against when he scored 36
# of his team's 61 points?" (recorded on xllamacpp, cut at max_tokens=320): after its
# opening it counts on, year by year, until the limit.
COUNTING_ANSWER = (
    "Kyle Van Zyl, a former England international, played a key role in the 2012 "
    "Under-21 World Cup and the 2013 Under-21 World Cup, playing for the England Under-21 "
    "team. He was a key player for the England Under-21 team in the 2013 Under-21 World "
    "Cup, scoring 71 points in eight appearances.\n\n"
    + "".join(
        f"In {year}, he played for the England Under-21 team in the {year} Under-21 World "
        f"Cup, scoring {goals} goals in {goals} matches. He also played for the England "
        f"Under-21 team in the {year + 1} Under-21 World Cup, scoring {goals + 1} goals in "
        f"{goals + 1} matches.\n\n" for year, goals in ((2014, 11), (2016, 12), (2018, 14)))
)[:935]


@pytest.mark.unit
def test_a_loop_that_counts_is_cut_after_its_first_copy() -> None:
    """Copies of a passage that differ only in their numbers are a loop: the answer is
    kept up to the end of the first copy (without the count, the re-ask at twice the
    limit counted on and was never read)."""
    assert COUNTING_ANSWER.endswith("scoring 1")
    cut = loop_cut(COUNTING_ANSWER)
    assert cut is not None
    assert COUNTING_ANSWER[:cut].endswith(
        "In 2014, he played for the England Under-21 team in the 2014 Under-21 World Cup, "
        "scoring 11 goals in 11 matches. He also played for the England Under-21 team in "
        "the 2015 Under-21 World Cup, scoring 12 goals in 12 matches.")


@pytest.mark.unit
def test_no_human_text_of_the_sample_is_a_loop() -> None:
    """Real writing (every long field of the Dolly sample: contexts, answers, lists of
    dates and numbers) is never taken for a loop, counting included."""
    sample = Path(__file__).parent.parent / "examples" / "dolly_sample.jsonl"
    texts = [value for line in sample.read_text(encoding="utf-8").splitlines()
             for value in json.loads(line).values()
             if isinstance(value, str) and len(value) >= MIN_SPAN]
    assert len(texts) >= 50
    assert [text[:60] for text in texts if loop_cut(text) is not None] == []


@pytest.mark.unit
def test_a_streamed_loop_is_found_soon_after_it_starts() -> None:
    """Fed in small pieces, the watch reports the loop within a few hundred characters."""
    watch = LoopWatch()
    found_at = None
    for start in range(0, len(LOOPING_ANSWER), 5):
        if watch.feed(LOOPING_ANSWER[start:start + 5]) is not None:
            found_at = start
            break
    assert found_at is not None and found_at < 500


@pytest.mark.unit
def test_the_stream_guard_stops_recorded_loops_soon_after_their_first_copy() -> None:
    """Every reply SmolLM2-135M wrote up to the limit in the pinned runs, streamed in
    token-sized pieces: the watch closes the request after 58 % of its characters on
    average (every character past the loop's first copy is paid for; a guard that knew
    the loop as its first copy ended would stop at 42 %). Checked every 200 characters,
    as before, it read 70 %; the bound fails then."""
    data = Path(__file__).parent / "data"
    # Runs with the text guard: a reply cut at the limit holds the whole loop.
    pins = [data / f"real_smollm2_{run}.jsonl" for run in ("json_object", "auto_json_object")]
    replies = [row["text"] for pin in pins
               for row in map(json.loads, pin.read_text(encoding="utf-8").splitlines())
               if row.get("finish_reason") == "length"]
    assert len(replies) >= 40
    shares = []
    for text in replies:
        watch, read = LoopWatch(), len(text)
        for start in range(0, len(text), 4):
            if watch.feed(text[start:start + 4]) is not None:
                read = min(start + 4, len(text))
                break
        shares.append(read / len(text))
    assert sum(shares) / len(shares) <= 0.62


@pytest.mark.unit
def test_json_end_sees_the_object_close_past_braces_in_strings() -> None:
    """The object ends at its own closing brace, not at one inside a string."""
    watch = JsonEnd()
    assert not watch.feed('```json\n{"a": "x}{\\"", "b": {"c": 1}')
    assert watch.feed("}\n```\nmore")
    assert watch.closed_at == len('```json\n{"a": "x}{\\"", "b": {"c": 1}}')


@pytest.mark.unit
@pytest.mark.parametrize(("cut", "closed"), [
    ('{"a": "one copy. one', '{"a": "one copy. one"}'),
    ('```json\n{"a": {"b": ["x", "y', '```json\n{"a": {"b": ["x", "y"]}}'),
    ('{"a": "x",\n  ', '{"a": "x"}'),
    ('{"a": "ends in an escape \\', '{"a": "ends in an escape "}'),
    ('{"a": "a } and a ] inside', '{"a": "a } and a ] inside"}'),
])
def test_a_json_answer_cut_at_a_loop_is_closed(cut: str, closed: str) -> None:
    """The open string, arrays and objects are closed; the result is JSON."""
    assert close_json(cut) == closed
    json.loads(closed.removeprefix("```json\n"))


@pytest.mark.unit
@pytest.mark.parametrize("text", ["Plain prose {not json", '{"a": 1} and more "text', ""])
def test_only_an_open_json_object_is_closed(text: str) -> None:
    assert close_json(text) is None


# What SmolLM2-135M wrote for a refine request in json_object mode (recorded on
# xllamacpp, cut at max_tokens=320): the input's last sentence, again and again.
_VIRGIN = ("Virgin Australia, the trading name of Virgin Australia Airlines Pty Ltd, is an "
           "Australian-based airline. It commenced services on 31 August 2000 as Virgin Blue, "
           "with two aircraft on a single route.")
_SERVES = " The airline has since grown to directly serve 32 cities in Australia."
LOOPING_REVISION = ('{\n    "instruction_new": "When did Virgin Australia start operating?",\n'
                    '    "input_new": "' + _VIRGIN + _SERVES * 14 + " The airline has sin")
REFINE_DATA = {"instruction": "When did Virgin Australia start operating?",
               "input": _VIRGIN + _SERVES, "reference_output": "On 31 August 2000.",
               "backbone_answer": "2000.", "evaluation": "Score: 6"}


@pytest.mark.unit
async def test_a_revision_looping_inside_its_json_is_read_with_one_copy() -> None:
    """The loop is cut after one copy and the object closed: the revision reads, with the
    item's input exactly as it was, on the first call (it was re-asked twice, then
    dead-lettered or left unrefined, in 35 of 40 recorded refine answers)."""
    client = LoopingClient(LOOPING_REVISION)
    answer = await ask(client, "refine", REFINE_DATA, round=1, max_tokens=320)
    assert client.limits == [320]
    assert answer.instruction == "When did Virgin Australia start operating?"
    assert answer.input == REFINE_DATA["input"]


@pytest.mark.unit
async def test_a_free_text_answer_is_never_closed_as_json() -> None:
    """Only tasks answering with a JSON object are closed: an answer that happens to
    open a brace keeps its text as the model wrote it."""
    code = "{\n  " + "x = compute(x)\n  " * 40
    answer = await ask(LoopingClient(code), "answer", {"instruction": "Code?", "input": ""},
                       max_tokens=320)
    assert answer.rstrip().endswith("x = compute(x)")


# ---------------------------------------------------------------- token limits


@pytest.mark.unit
def test_fitted_limits_follow_the_item() -> None:
    """A one-line output gets a limit near the floor; a long one gets room in proportion."""
    short = fit_aligned({"original_output": "Paris."})
    long = fit_aligned({"original_output": "x" * 3000})
    assert 512 < short < 600 and long > 3000
    assert fit_aligned({"original_output": "x" * 300}, "complete") > fit_aligned(
        {"original_output": "x" * 300})
    assert fit_revision({"instruction": "Q?", "input": "c" * 1191}) >= 512 + 3 * 397


# ---------------------------------------------------------------- the ask layer


class Cut:
    def __init__(self, text: str, finish_reason: str) -> None:
        self.text, self.finish_reason = text, finish_reason


class LoopingClient:
    """Answers with a looping text cut at the limit, then (if asked again) ``then``."""

    def __init__(self, first: str, then: str | None = None, reason: str = "length") -> None:
        self.first, self.then, self.reason = first, then, reason
        self.limits: list[int | None] = []
        self.options: list[ChatOptions | None] = []

    async def chat(self, messages: list[dict[str, str]], *,
                   json_schema: dict[str, Any] | None = None, schema_name: str = "answer",
                   max_tokens: int | None = None,
                   options: ChatOptions | None = None) -> Cut:
        self.limits.append(max_tokens)
        self.options.append(options)
        if len(self.limits) == 1 or self.then is None:
            return Cut(self.first, self.reason)
        return Cut(self.then, "stop")


@pytest.mark.unit
async def test_a_looping_answer_is_read_without_its_repeats_and_not_reasked() -> None:
    """Cut at the limit by a loop: read without the repeats, one call, no doubled limit."""
    client = LoopingClient(LOOPING_ANSWER)
    with capture_logs() as logs:
        answer = await ask(client, "answer", {"instruction": "When?", "input": ""},
                           max_tokens=320)
    assert client.limits == [320]
    assert answer.endswith("on a single route.") and answer.count("Virgin Blue") == 1
    assert [e["event"] for e in logs if e["event"].startswith("llm_answer")] == [
        "llm_answer_looped"]


@pytest.mark.unit
async def test_an_unreadable_loop_is_reasked_at_the_same_limit_with_a_penalty() -> None:
    """A loop inside JSON cannot be read: asked again like any unreadable answer, at the
    same limit (today's rule would have paid twice the limit for the same loop), and with
    a frequency penalty: at temperature 0 the same request loops the same way."""
    client = LoopingClient(LOOPING_REASON.replace("usable", "winner"), then=VERDICT)
    answer = await ask(client, "review", REVIEW_DATA, round=1, max_tokens=320)
    assert answer.winner == "B"
    assert client.limits == [320, 320]
    first, second = client.options
    assert first is not None and first.frequency_penalty is None
    assert second is not None and second.frequency_penalty == LOOP_REASK_PENALTY


@pytest.mark.unit
async def test_an_answer_unreadable_without_a_loop_is_reasked_as_it_was() -> None:
    """Only a loop brings the penalty: a plain unreadable answer is asked again unchanged."""
    client = LoopingClient("I think B is better.", then=VERDICT, reason="stop")
    await ask(client, "review", REVIEW_DATA, round=1, max_tokens=320)
    assert [o is not None and o.frequency_penalty for o in client.options] == [None, None]


@pytest.mark.unit
async def test_a_long_answer_without_a_loop_still_gets_twice_the_limit() -> None:
    """Cut at the limit with no loop in it: the re-ask with room to finish is kept."""
    client = LoopingClient("Winner: B\nExplanation: " + "because " * 3, then=VERDICT)
    await ask(client, "review", REVIEW_DATA, round=1, max_tokens=100)
    assert client.limits == [100, 200]


@pytest.mark.unit
async def test_tasks_that_copy_item_text_are_not_penalised_and_limits_fit() -> None:
    """Refine asks without the frequency penalty, at a limit fitted to the item."""
    client = LoopingClient("instruction_new: Say when.\ninput_new:", reason="stop")
    data = {"instruction": "When?", "input": "", "reference_output": "2000.",
            "backbone_answer": "2000", "evaluation": "Score: 9"}
    await ask(client, "refine", data, round=1, max_tokens=4096, fit_tokens=True)
    assert client.limits == [fit_revision(data)]
    options = client.options[0]
    assert options is not None and not options.penalize_repeats
    judge = LoopingClient(VERDICT, reason="stop")
    await ask(judge, "review", REVIEW_DATA, round=1, max_tokens=4096, fit_tokens=True)
    assert judge.limits == [4096]  # review has no fit: the configured limit
    assert judge.options[0] is not None and judge.options[0].penalize_repeats


# ---------------------------------------------------------------- the streaming client


def _sse(pieces: list[str], finish: str = "stop") -> list[bytes]:
    events = [{"model": "m", "choices": [{"index": 0, "delta": {"content": p},
                                          "finish_reason": None}]} for p in pieces]
    events.append({"model": "m", "choices": [{"index": 0, "delta": {},
                                              "finish_reason": finish}],
                   "usage": {"prompt_tokens": 40, "completion_tokens": len(pieces)}})
    return [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]


class Generation:
    """A streamed body that counts the events the client pulled before closing it."""

    def __init__(self, events: list[bytes]) -> None:
        self.events = events
        self.sent = 0
        self.bodies: list[dict[str, Any]] = []

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        self.bodies.append(json.loads(request.content))

        async def body() -> AsyncIterator[bytes]:
            for event in self.events:
                self.sent += 1
                yield event

        return httpx2.Response(200, content=body(),
                               headers={"content-type": "text/event-stream"})


@asynccontextmanager
async def streaming_client(generation: Generation, metrics: Metrics | None = None,
                           **fields: Any) -> AsyncIterator[LLMClient]:
    config = LLMRoleConfig(**{"base_url": "http://llm.test/v1", "model": "m",
                              "loop_guard": "stream", "max_retries": 0,
                              "structured_output": "off", **fields})
    async with (httpx2.AsyncClient(transport=httpx2.MockTransport(generation.handler)) as http,
                LLMClient("backbone", config, http_client=http, metrics=metrics,
                          backoff=Backoff(base_s=0.001, max_s=0.002)) as client):
        yield client


@pytest.mark.unit
async def test_streaming_guard_closes_the_request_at_a_loop() -> None:
    """A streamed loop is cut within a few hundred characters and the stream is closed,
    so the server generates no more; the reply says ``loop`` and counts the chunks."""
    pieces = [LOOPING_ANSWER[i:i + 4] for i in range(0, len(LOOPING_ANSWER), 4)] * 4
    generation = Generation(_sse(pieces, finish="length"))
    async with streaming_client(generation, frequency_penalty=0.4) as client:
        reply = await client.chat([{"role": "user", "content": "When?"}], max_tokens=4096,
                                  options=ChatOptions(stop=("<<<END",)))
    assert reply.finish_reason == "loop"
    assert reply.text.count("Virgin Blue") == 1
    assert generation.sent < len(generation.events) // 4
    assert reply.completion_tokens < 200
    body = generation.bodies[0]
    assert body["stream"] is True and body["stop"] == ["<<<END"]
    assert body["frequency_penalty"] == 0.4


@pytest.mark.unit
async def test_streaming_reads_a_whole_answer_with_the_servers_usage() -> None:
    """An answer without a loop streams to its end: the text whole, usage from the server."""
    generation = Generation(_sse(["Paris ", "is the ", "capital."]))
    async with streaming_client(generation) as client:
        reply = await client.chat([{"role": "user", "content": "Capital?"}], max_tokens=50)
    assert (reply.text, reply.finish_reason) == ("Paris is the capital.", "stop")
    assert (reply.prompt_tokens, reply.completion_tokens) == (40, 3)
    assert "frequency_penalty" not in generation.bodies[0]


@pytest.mark.unit
@pytest.mark.parametrize(("role", "call", "penalize", "sent"), [
    (None, 0.5, True, 0.5), (0.7, 0.5, True, 0.7), (0.2, 0.5, True, 0.5),
    (None, 0.5, False, None), (0.4, None, True, 0.4),
])
async def test_a_calls_penalty_is_sent_above_the_roles_where_the_task_allows(
        role: float | None, call: float | None, penalize: bool, sent: float | None) -> None:
    """A re-ask after a loop asks for a penalty: the higher of it and the role's is sent,
    and none on a task that copies item text."""
    generation = Generation(_sse(["B"]))
    async with streaming_client(generation, frequency_penalty=role) as client:
        await client.chat([{"role": "user", "content": "Which?"}], max_tokens=50,
                          options=ChatOptions(frequency_penalty=call,
                                              penalize_repeats=penalize))
    assert generation.bodies[0].get("frequency_penalty") == sent


@pytest.mark.unit
async def test_streaming_stops_reading_once_the_json_object_closed() -> None:
    """A structured answer is closed soon after its object ends (no grammar on the server)."""
    pieces = ['{"winner": ', '"B", ', '"explanation": "ok"}'] + ["\n"] * 40
    generation = Generation(_sse(pieces))
    async with streaming_client(generation, structured_output="json_object") as client:
        reply = await client.chat([{"role": "user", "content": "Which?"}],
                                  json_schema={"type": "object"}, max_tokens=500)
    assert reply.text == '{"winner": "B", "explanation": "ok"}'
    assert generation.sent < len(generation.events) - 10


@pytest.mark.unit
async def test_streamed_answers_count_looped_replies_in_metrics() -> None:
    """A looping answer read through ask is counted in iterrefine_llm_looped_total."""
    pieces = [LOOPING_ANSWER[i:i + 4] for i in range(0, len(LOOPING_ANSWER), 4)] * 4
    metrics = Metrics()
    async with streaming_client(Generation(_sse(pieces, "length")), metrics) as client:
        await ask(client, "answer", {"instruction": "When?", "input": ""}, max_tokens=300)
    looped = metrics.registry.get_sample_value(
        "iterrefine_llm_looped_total", {"role": "backbone", "task": "answer"})
    assert looped == 1


@pytest.mark.unit
def test_every_builtin_task_stops_at_an_echo_of_its_prompt() -> None:
    """Each built-in task sends stops for the tag line (and the data markers where its
    prompt has them); only refine and align, which copy item text, go unpenalised."""
    from iterrefine.tasks.registry import BUILTIN_TASKS, TASKS

    for name in BUILTIN_TASKS:
        options = TASKS[name].options
        assert "[iterrefine task=" in options.stop
        assert ("<<<DATA " in options.stop) == (name != "answer")
        assert options.penalize_repeats == (name not in ("refine", "align"))
        assert len(options.stop) <= 4  # OpenAI's limit


# SmolLM2-135M's score answer in json_object mode (recorded on xllamacpp): the grammar's
# maxLength ends the repeated sentence in "reason", and the answer goes on, complete.
BOUNDED_REPEATS = (
    '{\n  "usable": true,\n  "reason": "The example is not usable when the instruction has '
    'no real task or cannot be understood.  It is not a polygon when the instruction does '
    'not specify a polygon.  It is not a polygon when the instruction does not specify a '
    'polygon.  It is not a polygon when the instruction does not specify a polygon.  ",\n'
    '  "correctness": 1,\n  "completeness": 1,\n  "clarity": 1,\n  "compliance": 1,\n'
    '  "reasoning": 1,\n  "verdict": "high",\n  "justification": "The example is not usable '
    'when the instruction does not specify a polygon.  It is not a polygon when the '
    'instruction does not specify a polygon.  It is not a polygon when the instruction does '
    'not specify a polygon.  ",\n  "involves_reasoning": true\n}')


@pytest.mark.unit
async def test_repeats_inside_a_bounded_json_field_are_not_cut() -> None:
    """A structured answer repeating a sentence within a schema-bounded field streams to
    its end and reads; the same loop running on past any bound is cut."""
    pieces = [BOUNDED_REPEATS[i:i + 3] for i in range(0, len(BOUNDED_REPEATS), 3)]
    generation = Generation(_sse(pieces))
    async with streaming_client(generation, structured_output="json_object") as client:
        reply = await client.chat([{"role": "user", "content": "Score it."}],
                                  json_schema={"type": "object"}, max_tokens=320)
    assert reply.text == BOUNDED_REPEATS and reply.finish_reason == "stop"
    endless = '{"instruction_new": "' + "Describe the polygon. " * 80
    looping = Generation(_sse([endless[i:i + 4] for i in range(0, len(endless), 4)],
                              "length"))
    async with streaming_client(looping, structured_output="json_object") as client:
        cut = await client.chat([{"role": "user", "content": "Revise."}],
                                json_schema={"type": "object"}, max_tokens=4096)
    assert cut.finish_reason == "loop" and len(cut.text) < 200


@pytest.mark.unit
async def test_a_json_object_field_loop_is_cut_as_soon_as_free_text() -> None:
    """Only an enforced schema bounds a field (``maxLength``): under ``json_object`` a
    field loops like free text, so the stream is cut at the free-text threshold, well
    before the longer one that a ``json_schema`` answer gets."""
    looping = LOOPING_REVISION + _SERVES * 30
    pieces = [looping[i:i + 4] for i in range(0, len(looping), 4)]
    sent = {}
    for form in ("json_object", "json_schema"):
        generation = Generation(_sse(pieces, finish="length"))
        async with streaming_client(generation, structured_output=form) as client:
            reply = await client.chat([{"role": "user", "content": "Revise."}],
                                      json_schema={"type": "object"}, max_tokens=2000)
        assert reply.finish_reason == "loop", form
        sent[form] = generation.sent
    assert sent["json_object"] * 2 < sent["json_schema"], sent


# ---------------------------------------------------------------- rules pinned by mutation
# (benchmarks/mutation.py --target iterrefine/llm/loops.py found them unguarded)

_VARIANTS = ("many", "several", "some")


def _near_copies(copies: int, seed: int = 7) -> str:
    """A sentence repeated with one word varied at random: no exact period and no
    numbers, so only the recycled-phrase rule sees the loop (a penalty makes loops so)."""
    rng = random.Random(seed)
    return " ".join(f"The airline flies to {rng.choice(_VARIANTS)} cities across the whole "
                    "country every single day." for _ in range(copies))


@pytest.mark.unit
def test_near_copies_are_a_loop_by_their_recycled_phrases() -> None:
    text = _near_copies(16)  # 192 words
    assert loops._periodic_cut(text, MIN_SPAN) is None
    assert loops._counting_cut(text, MIN_SPAN) is None
    cut = loop_cut(text)
    assert cut is not None and cut < 150  # within the second copy
    # A structured answer's fields may repeat: it needs 250 recycled words, not 120.
    assert loop_cut(text, structured=True) is None
    assert loop_cut(_near_copies(24), structured=True) is not None


@pytest.mark.unit
@pytest.mark.parametrize(("text", "closed"), [
    ('See [1] and [2]. {"a": "x"} and after', '{"a": "x"}'),  # brackets before it: prose
    ('} stray {"a": {"b": [1]}}\nmore', '{"a": {"b": [1]}}'),  # a stray closer before it
    ('{"": "v", "q": "a \\" } inside"} tail', '{"": "v", "q": "a \\" } inside"}'),
])
def test_json_end_finds_the_first_objects_own_closing_brace(text: str, closed: str) -> None:
    watch = JsonEnd()
    assert watch.feed(text)
    assert watch.closed_at is not None
    assert text[: watch.closed_at].endswith(closed)
