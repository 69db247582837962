"""LLM tasks as registry entries: one TaskSpec drives prompts, parsing, schema, simulator."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import pytest

from iterrefine.config import LLMRoleConfig
from iterrefine.errors import UnparseableOutput
from iterrefine.llm import LLMClient
from iterrefine.sim import SimConfig, SimServer, register_simulated_answer
from iterrefine.sim.prompt import SimPrompt
from iterrefine.tasks.ask import ask
from iterrefine.tasks.parsing import AnswerContext
from iterrefine.tasks.prompts import PROMPT_EDITION, PROMPT_VERSION, build_messages
from iterrefine.tasks.registry import BUILTIN_TASKS, TASKS, TaskSpec, prompt_digest, register_task

pytestmark = pytest.mark.unit


class Toxicity(msgspec.Struct, frozen=True):
    toxic: bool


def _parse_toxicity(text: str, context: AnswerContext | None = None) -> Toxicity:
    try:
        return msgspec.json.decode(text, type=Toxicity)
    except msgspec.DecodeError as exc:
        raise UnparseableOutput(str(exc), task="toxicity", raw=text) from None


def _simulate_toxicity(prompt: SimPrompt, config: SimConfig) -> dict[str, Any]:
    return {"toxic": "idiot" in str(prompt.data.get("instruction", ""))}


TOXICITY = TaskSpec(
    name="toxicity",
    template="<!-- system -->\nSay whether the item in the data block is toxic.\n"
             '<!-- user -->\nAnswer {"toxic": true|false}.\n',
    required=frozenset({"instruction"}), parse=_parse_toxicity, answer=Toxicity,
    schema={"type": "object", "properties": {"toxic": {"type": "boolean"}},
            "required": ["toxic"], "additionalProperties": False},
)
register_simulated_answer("toxicity", _simulate_toxicity)


def test_prompt_version_follows_every_template_edit() -> None:
    """Any change to a built-in template, its keys or rounds gives another digest."""
    builtin = {name: TASKS[name] for name in BUILTIN_TASKS}
    assert PROMPT_VERSION.startswith(f"{PROMPT_EDITION}+")
    base = prompt_digest(builtin)
    for name, spec in builtin.items():
        edited = dataclasses.replace(spec, template=spec.template + " ")
        assert prompt_digest({**builtin, name: edited}) != base, name
        keyed = dataclasses.replace(spec, optional=spec.optional | {"extra"})
        assert prompt_digest({**builtin, name: keyed}) != base, name
    assert prompt_digest(builtin) == base  # and it is stable


async def test_a_registered_task_is_rendered_asked_parsed_and_simulated() -> None:
    """One register_task call: build_messages, ask (parser + schema) and the simulator work."""
    register_task(TOXICITY)
    assert register_task(TOXICITY) is TOXICITY  # registering the same entry again is fine
    with pytest.raises(ValueError, match="already registered"):
        register_task(dataclasses.replace(TOXICITY, required=frozenset({"input"})))
    system, user = (m["content"] for m in build_messages("toxicity", {"instruction": "x"}))
    assert system.startswith("[iterrefine task=toxicity ") and "toxic" in user
    with pytest.raises(ValueError, match="missing"):
        build_messages("toxicity", {})
    async with SimServer(SimConfig(), port=0) as sim:
        role = LLMRoleConfig(base_url=sim.base_url, model="sim-strong",
                             structured_output=True)
        async with LLMClient("strong", role) as client:
            rude = await ask(client, "toxicity", {"instruction": "you idiot"})
            kind = await ask(client, "toxicity", {"instruction": "thank you"})
        assert (rude, kind) == (Toxicity(toxic=True), Toxicity(toxic=False))
        assert sim.requests.recent(task="toxicity")


def test_a_template_without_its_markers_is_refused() -> None:
    """A template must say where the system and the user parts begin."""
    with pytest.raises(ValueError, match="lacks"):
        dataclasses.replace(TOXICITY, template="just text")
