"""Test kits for pipeline stages, at two depths (layer: above the app, below the CLI).

In-process, in milliseconds — one stage's handler on a real context, its LLM roles the
real client over an in-process transport to scripted answers::

    from iterrefine.testing import StageKit, make_item, only

    async def test_unusable_items_are_rejected() -> None:
        async with StageKit({"score": UNUSABLE_ANSWER}) as kit:
            out = only(await kit.handle("score", make_item(instruction="Q?", output="A.")))
        assert out.topic == "items.rejected"

On the real embedded broker — the whole graph, as ``iterrefine run`` runs it::

    from iterrefine.testing import ScriptedLLM, run_records

    async def test_my_graph() -> None:
        async with ScriptedLLM({"score": HIGH_SCORE_ANSWER}) as llm:
            result = await run_records([{"instruction": "Q?", "output": "A."}], llm=llm)
        assert result.curated[0].status == "high"

A scripted answer is text, a :class:`Reply` (text with a finish reason, e.g. cut off
at its limit), or a function of the :class:`ScriptedRequest`; every task without a
script gets the simulator's answer, so output made here is always marked simulated.
"""

from iterrefine.testing._broker_run import PipelineResult, isolated_config, run_records
from iterrefine.testing._http import ScriptedLLM
from iterrefine.testing._kit import StageKit, make_item, only
from iterrefine.testing._script import Answer, Reply, Script, ScriptedRequest

__all__ = [
    "Answer",
    "PipelineResult",
    "Reply",
    "Script",
    "ScriptedLLM",
    "ScriptedRequest",
    "StageKit",
    "isolated_config",
    "make_item",
    "only",
    "run_records",
]
