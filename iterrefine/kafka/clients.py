"""Kafka clients built from :class:`KafkaConfig` (security settings in one place).

aiokafka is used as is; this module only translates our config into its keyword
arguments and works around one broker quirk (see :func:`true_end_offsets`).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context
from aiokafka.structs import TopicPartition

from iterrefine.config import KafkaConfig
from iterrefine.errors import ConfigError


def _sasl_password(config: KafkaConfig) -> str:
    if config.sasl_password_file:
        try:
            return Path(config.sasl_password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read sasl_password_file {config.sasl_password_file}: {exc.strerror}; "
                "mount or create the file, or use sasl_password_env (--sasl-password-env VAR)"
            ) from None
    if config.sasl_password_env:
        value = os.environ.get(config.sasl_password_env)
        if not value:
            raise ConfigError(
                f"environment variable {config.sasl_password_env} (sasl_password_env) is not "
                f"set; export {config.sasl_password_env} with the SASL password, or point "
                "--sasl-password-file at a file holding it"
            )
        return value
    raise ConfigError(
        f"security_protocol {config.security_protocol} needs a SASL password: pass "
        "--sasl-password-env VAR (the name of an environment variable holding it) or "
        "--sasl-password-file FILE; passwords are never accepted on the command line"
    )


def _misplaced_settings(config: KafkaConfig) -> list[str]:
    """Security settings that the chosen protocol would silently ignore."""
    ssl = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    sasl = ("sasl_mechanism", "sasl_username", "sasl_password_env", "sasl_password_file")
    ignored = []
    if config.security_protocol not in ("SSL", "SASL_SSL"):
        ignored += [name for name in ssl if getattr(config, name)]
    if not config.security_protocol.startswith("SASL"):
        ignored += [name for name in sasl if getattr(config, name)]
    return ignored


def _ssl_context(config: KafkaConfig) -> ssl.SSLContext:
    if config.ssl_keyfile and not config.ssl_certfile:
        raise ConfigError("ssl_keyfile is set without ssl_certfile: pass the client certificate "
                          "too (--ssl-certfile)")
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=config.ssl_cafile, certfile=config.ssl_certfile, keyfile=config.ssl_keyfile
        )
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(
            f"{name}={value}"
            for name, value in (("ssl_cafile", config.ssl_cafile),
                                ("ssl_certfile", config.ssl_certfile),
                                ("ssl_keyfile", config.ssl_keyfile))
            if value
        ) or "the system CA store"
        raise ConfigError(f"cannot build the TLS context from {files}: {exc}") from None
    return context


def client_kwargs(config: KafkaConfig, bootstrap_servers: str) -> dict[str, Any]:
    """Connection and security keyword arguments shared by producer, consumer and admin.

    Raises :class:`ConfigError` (saying the fix) for an incomplete or inconsistent
    security setup, before any connection is tried.
    """
    ignored = _misplaced_settings(config)
    if ignored:
        raise ConfigError(
            f"{', '.join(ignored)} set, but security_protocol is {config.security_protocol}, "
            "which would ignore them: pass --security-protocol SSL, SASL_PLAINTEXT or SASL_SSL "
            "to match (or remove the settings)"
        )
    kwargs: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "client_id": config.client_id,
        "security_protocol": config.security_protocol,
        "retry_backoff_ms": config.retry_backoff_ms,
    }
    if config.security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = _ssl_context(config)
    if config.security_protocol.startswith("SASL"):
        if not config.sasl_mechanism or not config.sasl_username:
            raise ConfigError(
                f"security_protocol {config.security_protocol} needs --sasl-mechanism "
                "(PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512) and --sasl-username, plus "
                "--sasl-password-env VAR or --sasl-password-file FILE"
            )
        kwargs["sasl_mechanism"] = config.sasl_mechanism
        kwargs["sasl_plain_username"] = config.sasl_username
        kwargs["sasl_plain_password"] = _sasl_password(config)
    return kwargs


def make_producer(
    config: KafkaConfig, bootstrap_servers: str, *, linger_ms: int = 5
) -> AIOKafkaProducer:
    # acks=all and no idempotence: the embedded broker has no InitProducerId, and the
    # pipeline is at-least-once with duplicates removed by (id, revision) at export.
    return AIOKafkaProducer(
        **client_kwargs(config, bootstrap_servers),
        acks="all",
        enable_idempotence=False,
        linger_ms=linger_ms,
        max_batch_size=256 * 1024,
        max_request_size=4 * 1024 * 1024,
    )


def make_consumer(
    config: KafkaConfig, bootstrap_servers: str, *topics: str, **overrides: Any
) -> AIOKafkaConsumer:
    kwargs: dict[str, Any] = {
        **client_kwargs(config, bootstrap_servers),
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
    }
    kwargs.update(overrides)
    return AIOKafkaConsumer(*topics, **kwargs)


def make_admin(config: KafkaConfig, bootstrap_servers: str) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**client_kwargs(config, bootstrap_servers))


#: The cluster id the embedded broker (Tansu) reports unless told otherwise.
TANSU_CLUSTER_ID_PREFIX = "tansu"


async def cluster_id(config: KafkaConfig, bootstrap_servers: str) -> str | None:
    """The id the cluster reports in its metadata (None if it reports none)."""
    admin = make_admin(config, bootstrap_servers)
    await admin.start()
    try:
        described: dict[str, Any] = await admin.describe_cluster()
    finally:
        await admin.close()
    found = described.get("cluster_id")
    return str(found) if found else None


async def true_end_offsets(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """End offsets that are right even on Tansu.

    Tansu answers ListOffsets(latest) with the base offset of the last batch + 1,
    which is too small whenever that batch held several records. The fetch
    response's high watermark is right, so read from the reported end and take
    the highwater. ``consumer`` must not be subscribed (it is assigned here).
    """
    reported: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
    consumer.assign(partitions)
    result: dict[TopicPartition, int] = {}
    for tp in partitions:
        consumer.seek(tp, max(0, reported[tp] - 1))
    pending = {tp for tp in partitions if reported[tp] > 0}
    for tp in partitions:
        if tp not in pending:
            result[tp] = reported[tp]
    for _ in range(50):
        if not pending:
            break
        batch = await consumer.getmany(*pending, timeout_ms=200)
        for tp in list(pending):
            hw = consumer.highwater(tp)
            if hw is not None:
                result[tp] = max(hw, reported[tp])
                pending.discard(tp)
            elif tp in batch:
                result[tp] = max(batch[tp][-1].offset + 1, reported[tp])
    for tp in pending:  # the broker never answered a fetch: fall back to what it reported
        result[tp] = reported[tp]
    return result


async def read_to_end(
    config: KafkaConfig, bootstrap_servers: str, topics: list[str]
) -> list[ConsumerRecord]:
    """Every record currently in ``topics`` (all partitions, from the beginning)."""
    consumer = make_consumer(config, bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return []
        ends = await true_end_offsets(consumer, partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        for tp in partitions:
            consumer.seek(tp, 0)
        out: list[ConsumerRecord] = []
        idle_polls = 0
        while remaining and idle_polls < 50:
            batch = await consumer.getmany(*remaining, timeout_ms=200, max_records=10_000)
            idle_polls = 0 if batch else idle_polls + 1
            for tp, records in batch.items():
                out.extend(r for r in records if r.offset < ends[tp])
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return out
    finally:
        await consumer.stop()
