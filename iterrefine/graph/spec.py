"""The stage graph: the pipeline's topology as data, declared once.

Each stage is one :class:`StageSpec`: its name (also its consumer group), the topic
it reads, the topics it may write, whether its handler waits, and how to build the
handler from a :class:`~iterrefine.graph.context.PipelineContext`. A :class:`StageGraph`
is an ordered set of specs; everything that needs the topology derives it from
here: the topic set and ``ensure_topics``, ``iterrefine worker`` stage names,
``status``, ``replay`` (with each stage's own reset rule) and the deploy checks.

The built-in stages live in :mod:`iterrefine.consumers`; user stages come from
config (``[[pipeline.stages]]``, see :mod:`iterrefine.app.pipeline`) as ``module:attr``
references. This module holds only the mechanism: the spec type, checks, and
import of references.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from iterrefine.errors import ConfigError
from iterrefine.item.model import Item
from iterrefine.kafka.topics import DLQ_TOPIC, INGEST_TOPIC, TERMINAL_TOPICS
from iterrefine.runtime.stage import Handler, InlineHandler, Stage

if TYPE_CHECKING:
    from iterrefine.graph.context import PipelineContext

__all__ = ["HandlerFactory", "ReplayReset", "StageGraph", "StageSpec", "load_object"]

#: Builds a stage's handler from the pipeline context (LLM roles, config, metrics).
HandlerFactory = Callable[["PipelineContext"], Handler | InlineHandler]
#: ``item`` as it would enter the stage again, with ``revision``; raises
#: :class:`~iterrefine.errors.ValidationError` (reason = short code) if it cannot.
ReplayReset = Callable[[Item, int], Item]


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    """One stage of the graph, declared as data beside its handler.

    Where it reads is said once: either ``input_topic`` here, or ``before = "<stage>"``
    in its ``[[stages]]`` entry (it then reads that stage's topic). A record is decoded
    by its topic (:func:`iterrefine.runtime.stage.decoder_for`): a stage reading
    ``items.raw`` gets raw records validated into items without asking for it.
    """

    name: str
    #: The logical topic it reads; None: placed by ``before`` in the config.
    input_topic: str | None = None
    #: Every logical topic the handler may write (the DLQ is always allowed).
    outputs: tuple[str, ...]
    #: True for an ``async def`` handler; False for a plain function run inline.
    waits: bool
    handler: HandlerFactory
    #: How a replayed item re-enters this stage; None: replay cannot target it.
    reset: ReplayReset | None = None
    #: LLM roles the handler calls (``worker`` requires them to be configured).
    roles: tuple[str, ...] = ()
    #: One line for ``iterrefine worker --help`` and docs.
    summary: str = field(default="", compare=False)
    #: Settings for the handler (``ctx.options``): a ``[[stages]]`` entry's ``options``.
    options: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"stage name {self.name!r} must be a Python identifier")
        if not self.outputs:
            raise ConfigError(f"stage {self.name!r} declares no output topics")

    @property
    def topic(self) -> str:
        """The topic it reads (a spec in a graph always has one)."""
        if self.input_topic is None:
            raise ConfigError(
                f"stage {self.name!r} says nowhere where it reads: give its StageSpec an "
                "input_topic, or place it with before = \"<stage>\" in its [[stages]] entry")
        return self.input_topic

    def build(self, ctx: PipelineContext) -> Stage:
        """The runnable stage, its handler built on ``ctx`` (with this stage's options)."""
        own = replace(ctx, options=self.options) if self.options else ctx
        return Stage(self.name, self.topic, self.handler(own), outputs=self.outputs,
                     waits=self.waits)

    def with_options(self, options: Mapping[str, Any]) -> StageSpec:
        """This spec with ``options`` for its handler (``ctx.options``)."""
        return replace(self, options=dict(options))

    def reading(self, topic: str) -> StageSpec:
        """This spec consuming ``topic`` instead (a stage inserted before it)."""
        return replace(self, input_topic=topic)


class StageGraph:
    """An ordered, checked set of stages: names unique, every output read or terminal."""

    def __init__(self, specs: Iterable[StageSpec]) -> None:
        self._specs: dict[str, StageSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ConfigError(f"two stages are named {spec.name!r}; stage names are unique")
            self._specs[spec.name] = spec
        self._check()

    def _check(self) -> None:
        read = {spec.topic for spec in self}
        for spec in self:
            if spec.input_topic in TERMINAL_TOPICS:
                raise ConfigError(
                    f"stage {spec.name!r} reads {spec.input_topic}, a terminal topic: results "
                    "there are final (read them with export, or replay them into a stage)")
            unknown = [t for t in spec.outputs if t not in read and t not in TERMINAL_TOPICS]
            if unknown:
                raise ConfigError(
                    f"stage {spec.name!r} declares output topic(s) {unknown} that no stage of "
                    f"the graph reads and that are not terminal ({', '.join(TERMINAL_TOPICS)}); "
                    f"the graph's stages read {sorted(read)}. Fix the stage's outputs, or add "
                    "the stage that reads them")

    def __iter__(self) -> Iterator[StageSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __getitem__(self, name: str) -> StageSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise ConfigError(
                f"unknown stage {name!r}; the pipeline's stages are {', '.join(self.names)}"
            ) from None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def inputs(self) -> dict[str, str]:
        """Stage name → the logical topic it reads (its group is prefix + name)."""
        return {spec.name: spec.topic for spec in self}

    def readers(self, topic: str) -> list[str]:
        """The stages that read ``topic``, in graph order."""
        return [spec.name for spec in self if spec.topic == topic]

    def topics(self) -> tuple[str, ...]:
        """Every logical topic of the pipeline, in order: inputs, then terminals and DLQ."""
        ordered: dict[str, None] = {INGEST_TOPIC: None}
        for spec in self:
            ordered.setdefault(spec.topic, None)
        for spec in self:
            for topic in spec.outputs:
                if topic not in TERMINAL_TOPICS:
                    ordered.setdefault(topic, None)
        for topic in (*TERMINAL_TOPICS, DLQ_TOPIC):
            ordered.setdefault(topic, None)
        return tuple(ordered)

    def select(self, names: Sequence[str]) -> list[StageSpec]:
        """The specs called ``names`` (``all`` = every stage), or a ConfigError naming them."""
        if "all" in names:
            return list(self)
        return [self[name] for name in dict.fromkeys(names)]

    def build(self, ctx: PipelineContext, names: Sequence[str] | None = None) -> list[Stage]:
        """The runnable stages called ``names`` (default: all), built on ``ctx``."""
        specs = list(self) if names is None else self.select(names)
        return [spec.build(ctx) for spec in specs]

    def inserted(self, spec: StageSpec, *, before: str | None = None) -> StageGraph:
        """A new graph with ``spec`` added; ``before``: it takes that stage's input.

        Inserting ``dedup`` before ``route`` makes ``dedup`` read route's topic
        (``items.scored``) and route read ``items.dedup``, which ``dedup`` must
        declare among its outputs.
        """
        if before is None:
            return StageGraph([*self, spec])
        target = self[before]
        if spec.input_topic not in (None, target.topic):
            raise ConfigError(
                f"stage {spec.name!r} declares input_topic {spec.input_topic!r} but is placed "
                f"before {before!r}, which reads {target.topic!r}: a stage placed with before "
                f"reads that stage's topic, so drop input_topic from its StageSpec (or set it "
                f"to {target.topic!r})")
        own = f"items.{spec.name}"
        if own not in spec.outputs:
            raise ConfigError(
                f"stage {spec.name!r} is inserted before {before!r}, so it passes items on "
                f"through {own}: declare {own!r} among its outputs and write the items "
                f"{before} should see there")
        placed = spec.reading(target.topic)
        specs: list[StageSpec] = []
        for existing in self:
            if existing.name == before:
                specs += [placed, existing.reading(own)]
            else:
                specs.append(existing)
        return StageGraph(specs)


def load_object(reference: str, *, what: str) -> Any:
    """The object named by ``module:attr`` (``attr`` may be dotted), or a clear ConfigError."""
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{what} {reference!r} must be written module:attribute, "
                          "e.g. my_stages.dedup:SPEC")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import module {module_name!r} of {what} {reference!r}: {exc}. Install it, "
            "or list its directory in import_paths (a top-level key of the config file)") from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no {attr!r} ({what} "
                              f"{reference!r})") from None
    return target
