"""Topic names, and their creation, checked against what the pipeline needs.

The topic *set* is not listed here: it is derived from the stage graph
(:meth:`iterrefine.graph.spec.StageGraph.topics`). This module knows only the topics the
mechanisms themselves use: ingest writes ``items.raw``, export and the watcher read
the terminal topics, every stage may dead-letter to ``items.dlq``, and the paper's
selection shares its model through ``items.selection-model``.

:func:`ensure_topics` creates what is missing and reads every answer: aiokafka's admin
client returns per-topic errors instead of raising, and a broker that auto-creates
topics then makes 1-partition topics the first time a client asks for one. A topic that
could not be created, or that exists with another partition count or cleanup policy
than the pipeline needs, raises :class:`~iterrefine.errors.TopicSetupError` naming the
topic, what was asked, what exists and the fix, before any stage starts (so before any
LLM call is paid). Each topic belongs to a class (:data:`TopicClass`) whose retention
``[kafka.retention_ms]`` sets (:class:`~iterrefine.config.TopicRetention` says why).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import for_code

from iterrefine.config import KafkaConfig
from iterrefine.errors import TopicSetupError
from iterrefine.kafka.clients import make_admin

log = structlog.get_logger("iterrefine.kafka")

INGEST_TOPIC = "items.raw"
DLQ_TOPIC = "items.dlq"
#: Where every item ends, exactly once as seen by the exporter.
TERMINAL_TOPICS = ("items.curated", "items.rejected", DLQ_TOPIC)
#: What ingest, export and dead-lettering need, whatever the stages are.
CORE_TOPICS = (INGEST_TOPIC, *TERMINAL_TOPICS)
#: The paper's selection: the shared centroid model (:mod:`iterrefine.selection.shared`).
MODEL_TOPIC = "items.selection-model"
#: A 4096-dimension model with k = 132 is 2.2 MB per version.
MODEL_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
#: The exact selection of a finite run (:mod:`iterrefine.selection.barrier`): every
#: scored item's signals, and the one decision per item. One partition each: a single
#: reader sees them all, in order.
SELECTION_SIGNALS_TOPIC = "items.selection-signals"
SELECTION_DECISIONS_TOPIC = "items.selection-decisions"
#: A signal carries an embedding vector (4096 float32 = 16 KiB; far under this).
SELECTION_MAX_MESSAGE_BYTES = 1024 * 1024
_SINGLE_PARTITION = frozenset({MODEL_TOPIC, SELECTION_SIGNALS_TOPIC, SELECTION_DECISIONS_TOPIC})
#: Kafka's rules for a topic name (longer or other characters: the broker refuses it).
_LEGAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_MAX_NAME = 249
_TOPIC_EXISTS = 36

TopicClass = Literal["raw", "intermediate", "terminal", "model"]


class TopicNames:
    """Maps logical topic names (``items.raw``) to full ones (``iterrefine.items.raw``)."""

    def __init__(self, prefix: str = "iterrefine.") -> None:
        self.prefix = prefix

    def __getitem__(self, logical: str) -> str:
        return self.prefix + logical

    def logical(self, full: str) -> str:
        return full.removeprefix(self.prefix)

    def full(self, logical: Iterable[str]) -> list[str]:
        return [self.prefix + name for name in logical]

    def terminal(self) -> list[str]:
        return self.full(TERMINAL_TOPICS)


def topic_class(logical: str) -> TopicClass:
    """The retention class of a logical topic (anything a stage reads and writes on is
    intermediate)."""
    if logical == INGEST_TOPIC:
        return "raw"
    if logical in TERMINAL_TOPICS:
        return "terminal"
    if logical == MODEL_TOPIC:
        return "model"
    return "intermediate"


@dataclass(frozen=True)
class TopicSpec:
    """One topic as the pipeline needs it."""

    name: str
    kind: TopicClass
    partitions: int
    replication: int
    #: ``delete`` for the pipeline's topics (a compacted one could drop an item's earlier
    #: hop before it was read); ``compact`` for the model (its newest version must stay).
    cleanup_policy: str
    configs: Mapping[str, str]

    def asked(self) -> str:
        return (f"{self.partitions} partition{'s' * (self.partitions != 1)}, cleanup.policy "
                f"{self.cleanup_policy}, replication factor {self.replication}")


@dataclass(frozen=True)
class FoundTopic:
    """What a topic that exists on the cluster is like."""

    name: str
    partitions: int
    replication: int
    cleanup_policy: str


def replication_for(config: KafkaConfig, brokers: int) -> tuple[int, int]:
    """(replication factor, ``min.insync.replicas``) for new topics on ``brokers`` brokers."""
    replication = config.replication_factor or max(1, min(3, brokers))
    insync = config.min_insync_replicas or (2 if replication >= 3 else 1)
    return replication, insync


def topic_specs(
    config: KafkaConfig, logical: Iterable[str], *, replication: int, insync: int,
) -> list[TopicSpec]:
    """The pipeline's topics (``logical`` and the core ones) as they should be created."""
    names = TopicNames(config.topic_prefix)
    specs = []
    for topic in dict.fromkeys((*CORE_TOPICS, *logical)):
        kind = topic_class(topic)
        retention: int = getattr(config.retention_ms, kind)
        configs = {"min.insync.replicas": str(insync), "retention.ms": str(retention)}
        if kind == "model":
            policy = "compact"
            configs["max.message.bytes"] = str(MODEL_MAX_MESSAGE_BYTES)
        else:
            policy = "delete"
        if topic in (SELECTION_SIGNALS_TOPIC, SELECTION_DECISIONS_TOPIC):
            configs["max.message.bytes"] = str(SELECTION_MAX_MESSAGE_BYTES)
        configs["cleanup.policy"] = policy
        partitions = 1 if topic in _SINGLE_PARTITION else config.partitions
        specs.append(TopicSpec(names[topic], kind, partitions, replication, policy, configs))
    return specs


def check_names(specs: Sequence[TopicSpec], prefix: str) -> None:
    """Refuse topic names any Kafka broker would refuse (some create them anyway)."""
    for spec in specs:
        bad = sorted(set(spec.name) - _LEGAL)
        if bad or len(spec.name) > _MAX_NAME:
            why = (f"characters {''.join(bad)!r} are not allowed" if bad
                   else f"{len(spec.name)} characters, more than Kafka's {_MAX_NAME}")
            raise TopicSetupError(
                f"topic {spec.name} cannot exist on Kafka ({why}): pick a topic prefix of "
                f"ASCII letters, digits, '.', '_' and '-' (now {prefix!r}; --topic-prefix or "
                "[kafka] topic_prefix)")


def check_replication(specs: Sequence[TopicSpec], brokers: int, insync: int) -> None:
    """A replication factor the cluster cannot hold fails here, with the fix (Kafka would
    refuse it too; the embedded Tansu would pretend)."""
    if not specs:
        return
    replication = specs[0].replication
    if replication > brokers:
        raise TopicSetupError(
            f"cannot create {', '.join(s.name for s in specs)}: asked replication factor "
            f"{replication}, but the cluster has {brokers} broker{'s' * (brokers != 1)}. Fix: "
            f"set [kafka] replication_factor = {brokers} (or leave it unset: min(3, brokers)), "
            "or add brokers")
    if insync > replication:
        raise TopicSetupError(
            f"cannot create {', '.join(s.name for s in specs)}: asked min.insync.replicas "
            f"{insync} with replication factor {replication}, so no write could ever be "
            f"acknowledged. Fix: set [kafka] min_insync_replicas to at most {replication} "
            "(or leave it unset)")


def creation_problem(spec: TopicSpec, code: int, message: str | None, brokers: int) -> str:
    """The line that says why ``spec`` could not be created, and the fix."""
    error = for_code(code).__name__
    said = f"{error} ({code})" + (f": {message}" if message else "")
    return (f"{spec.name} could not be created: asked {spec.asked()} with "
            f"{', '.join(f'{k}={v}' for k, v in sorted(spec.configs.items()))} on a cluster of "
            f"{brokers} broker{'s' * (brokers != 1)}; the broker answered {said}. Fix: correct "
            "the [kafka] setting the broker names, or create the topic yourself as asked "
            "(README, \"Topics\")")


def mismatch_problem(spec: TopicSpec, found: FoundTopic) -> str | None:
    """The line that says how an existing topic differs from what the pipeline needs."""
    wrong = []
    if found.partitions != spec.partitions:
        wrong.append(f"{found.partitions} partition{'s' * (found.partitions != 1)}")
    needs_compact = spec.cleanup_policy == "compact"
    if ("compact" in found.cleanup_policy) != needs_compact:
        wrong.append(f"cleanup.policy {found.cleanup_policy}")
    if not wrong:
        return None
    fixes = []
    if found.partitions != spec.partitions and spec.kind != "model":
        fixes.append(f"set [kafka] partitions = {found.partitions} (or --partitions "
                     f"{found.partitions}) if every pipeline topic has that many")
    if found.partitions != spec.partitions:
        fixes.append(f"if it holds nothing you need, delete it (kafka-topics.sh --delete "
                     f"--topic {found.name}) and iterrefine creates it as asked")
    if ("compact" in found.cleanup_policy) != needs_compact:
        fixes.append(f"kafka-configs.sh --alter --entity-type topics --entity-name {found.name} "
                     f"--add-config cleanup.policy={spec.cleanup_policy}")
    return (f"{found.name} exists with {' and '.join(wrong)}; the pipeline needs "
            f"{spec.asked()}. Fix: {'; or '.join(fixes)}")


async def ensure_topics(
    config: KafkaConfig, bootstrap_servers: str, topics: Iterable[str] = ()
) -> list[str]:
    """Create whichever of ``topics`` (logical) and the core topics are missing, and check
    the ones that exist; raise :class:`TopicSetupError` listing every problem.

    Returns the full names created. Stage processes pass their graph's topics
    (:meth:`iterrefine.graph.spec.StageGraph.topics`).
    """
    admin = make_admin(config, bootstrap_servers)
    await admin.start()
    try:
        brokers = len((await admin.describe_cluster()).get("brokers") or ()) or 1
        replication, insync = replication_for(config, brokers)
        specs = topic_specs(config, topics, replication=replication, insync=insync)
        check_names(specs, config.topic_prefix)
        # list_topics asks for every topic: naming ours could make the broker auto-create them.
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        check_replication(missing, brokers, insync)
        problems, raced = await _create(admin, missing, brokers)
        to_check = [s for s in specs if s.name in existing or s.name in raced]
        problems += await _check_existing(admin, to_check, replication)
    finally:
        await admin.close()
    if problems:
        raise TopicSetupError(
            f"the Kafka topics on {bootstrap_servers} are not what the pipeline needs; nothing "
            "was started:\n  - " + "\n  - ".join(problems))
    created = [s.name for s in missing if s.name not in raced]
    if created:
        log.info("topics_created", topics=created, partitions=config.partitions,
                 replication_factor=replication, min_insync_replicas=insync)
    return created


async def _create(
    admin: AIOKafkaAdminClient, missing: Sequence[TopicSpec], brokers: int,
) -> tuple[list[str], set[str]]:
    """Create ``missing``: (problems, names another client created meanwhile)."""
    if not missing:
        return [], set()
    response = await admin.create_topics([
        NewTopic(s.name, s.partitions, s.replication, topic_configs=dict(s.configs))
        for s in missing])
    by_name = {s.name: s for s in missing}
    problems: list[str] = []
    raced: set[str] = set()
    for name, code, message in _topic_errors(response):
        if code == _TOPIC_EXISTS:  # another worker created it between our list and create
            raced.add(name)
        elif code and name in by_name:
            problems.append(creation_problem(by_name[name], code, message, brokers))
    return problems, raced


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    """(topic, error code, message) of every topic in a CreateTopics response (any version)."""
    out = []
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        out.append((name, code, entry[2] if len(entry) > 2 else None))
    return out


async def _check_existing(
    admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec], replication: int,
) -> list[str]:
    """Problems of the topics in ``specs`` that exist: partitions and cleanup policy."""
    if not specs:
        return []
    found = await _describe(admin, [s.name for s in specs])
    problems = []
    for spec in specs:
        topic = found.get(spec.name)
        if topic is None:
            problems.append(f"{spec.name} is listed by the broker but cannot be described")
            continue
        problem = mismatch_problem(spec, topic)
        if problem is not None:
            problems.append(problem)
        elif topic.replication < replication:
            log.warning("topic_under_replicated", topic=spec.name,
                        replication_factor=topic.replication, configured=replication,
                        fix="kafka-reassign-partitions.sh to add replicas")
    return problems


async def _describe(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, FoundTopic]:
    """Partitions, replication and cleanup policy of existing topics ``names``."""
    described = {t["topic"]: t for t in await admin.describe_topics(names)
                 if not t.get("error_code")}
    # Unfiltered: the embedded Tansu drops the connection when asked for named configs,
    # and lists only the configs that were set (a topic without cleanup.policy deletes).
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in described])
    policies: dict[str, str] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            for entry in resource["config_entries"]:
                if entry["config_names"] == "cleanup.policy":
                    policies[resource["resource_name"]] = entry["config_value"]
    out = {}
    for name, topic in described.items():
        partitions = topic["partitions"]
        replicas = len(partitions[0]["replicas"]) if partitions else 0
        out[name] = FoundTopic(name, len(partitions), replicas,
                               policies.get(name) or "delete")
    return out
