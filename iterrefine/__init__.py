"""iterrefine: curate instruction-tuning data by iterative LLM refinement, on Kafka.

The public names are re-exported here (pinned by tests/test_exported_members.py);
everything else lives in modules a user need not import. They load on first use,
so that ``iterrefine --help`` does not pay for Kafka and HTTP clients it never uses.

From Python (a notebook), :func:`curate` runs a curation on records or a file and
gives back the rows and the summary (docs/python-api.md).

A stage of your own is a :class:`StageSpec` in your module plus a ``[[stages]]``
entry in the config (docs/writing-a-stage.md); an LLM task of your own is a
:class:`TaskSpec` passed to :func:`register_task`. :mod:`iterrefine.testing` runs a
stage in-process against scripted LLM answers (milliseconds), or a whole graph on the
embedded broker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name → the module that defines it.
_EXPORTS: dict[str, str] = {
    "PIPELINE": "iterrefine.consumers",
    "ChatClient": "iterrefine.llm.chat",
    "Curation": "iterrefine.app.api",
    "acurate": "iterrefine.app.api",
    "curate": "iterrefine.app.api",
    "dataset_card": "iterrefine.app.dataset",
    "save_dataset": "iterrefine.app.dataset",
    "Config": "iterrefine.config",
    "ConfigError": "iterrefine.errors",
    "Handler": "iterrefine.runtime.stage",
    "InlineHandler": "iterrefine.runtime.stage",
    "Item": "iterrefine.item.model",
    "IterrefineError": "iterrefine.errors",
    "Output": "iterrefine.runtime.stage",
    "PipelineContext": "iterrefine.graph.context",
    "ReviewSample": "iterrefine.tasks.ask",
    "RoutingPolicy": "iterrefine.consumers.route",
    "RunOptions": "iterrefine.app.run",
    "RunResult": "iterrefine.app.run",
    "StageContractError": "iterrefine.errors",
    "StageGraph": "iterrefine.graph.spec",
    "StageSpec": "iterrefine.graph.spec",
    "TransientError": "iterrefine.errors",
    "UnparseableOutput": "iterrefine.errors",
    "ValidationError": "iterrefine.errors",
    "AnswerContext": "iterrefine.tasks.parsing",
    "TaskSpec": "iterrefine.tasks.registry",
    "ask": "iterrefine.tasks.ask",
    "ask_aligned": "iterrefine.tasks.ask",
    "ask_answer": "iterrefine.tasks.ask",
    "ask_evaluation": "iterrefine.tasks.ask",
    "ask_revision": "iterrefine.tasks.ask",
    "ask_score": "iterrefine.tasks.ask",
    "ask_verdict": "iterrefine.tasks.ask",
    "load_config": "iterrefine.config",
    "register_simulated_answer": "iterrefine.sim",
    "register_task": "iterrefine.tasks.registry",
    "load_graph": "iterrefine.app.pipeline",
    "run_pipeline": "iterrefine.app.run",
    "serve_pipeline": "iterrefine.app.pipeline",
}

__all__ = [
    "PIPELINE",
    "AnswerContext",
    "ChatClient",
    "Config",
    "ConfigError",
    "Curation",
    "Handler",
    "InlineHandler",
    "Item",
    "IterrefineError",
    "Output",
    "PipelineContext",
    "ReviewSample",
    "RoutingPolicy",
    "RunOptions",
    "RunResult",
    "StageContractError",
    "StageGraph",
    "StageSpec",
    "TaskSpec",
    "TransientError",
    "UnparseableOutput",
    "ValidationError",
    "__version__",
    "acurate",
    "ask",
    "ask_aligned",
    "ask_answer",
    "ask_evaluation",
    "ask_revision",
    "ask_score",
    "ask_verdict",
    "curate",
    "dataset_card",
    "load_config",
    "load_graph",
    "register_simulated_answer",
    "register_task",
    "run_pipeline",
    "save_dataset",
    "serve_pipeline",
]

if TYPE_CHECKING:
    from iterrefine.app.api import Curation, acurate, curate
    from iterrefine.app.dataset import dataset_card, save_dataset
    from iterrefine.app.pipeline import load_graph, serve_pipeline
    from iterrefine.app.run import RunOptions, RunResult, run_pipeline
    from iterrefine.config import Config, load_config
    from iterrefine.consumers import PIPELINE
    from iterrefine.consumers.route import RoutingPolicy
    from iterrefine.errors import (
        ConfigError,
        IterrefineError,
        StageContractError,
        TransientError,
        UnparseableOutput,
        ValidationError,
    )
    from iterrefine.graph.context import PipelineContext
    from iterrefine.graph.spec import StageGraph, StageSpec
    from iterrefine.item.model import Item
    from iterrefine.llm.chat import ChatClient
    from iterrefine.runtime.stage import Handler, InlineHandler, Output
    from iterrefine.sim import register_simulated_answer
    from iterrefine.tasks.ask import (
        ReviewSample,
        ask,
        ask_aligned,
        ask_answer,
        ask_evaluation,
        ask_revision,
        ask_score,
        ask_verdict,
    )
    from iterrefine.tasks.parsing import AnswerContext
    from iterrefine.tasks.registry import TaskSpec, register_task


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'iterrefine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
