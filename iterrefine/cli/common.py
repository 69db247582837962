"""Options shared by the commands that talk to Kafka and LLMs, parsed into one Config."""

from __future__ import annotations

import argparse
from typing import Any

from iterrefine.config import Config, check_endpoints, load_config
from iterrefine.errors import ConfigError

NO_LLM_MESSAGE = (
    "no LLM configured. Either pass --llm sim to use the built-in simulator (for demos and "
    "tests; results are marked simulated), or point at real OpenAI-compatible endpoints with "
    "--llm-base-url URL --strong-model MODEL --backbone-model MODEL [--api-key-env VAR] "
    "(or [llm.strong] and [llm.backbone] tables in a --config TOML file)"
)


NO_BROKER_MESSAGE = (
    "no Kafka to connect to: pass --bootstrap HOST:PORT (or kafka.bootstrap_servers in the "
    "config file), or start the embedded broker first with `iterrefine broker up`"
)


def resolve_bootstrap(config: Config) -> str:
    """The configured cluster, else the running ``iterrefine broker up`` broker."""
    if config.kafka.bootstrap_servers:
        return config.kafka.bootstrap_servers
    from iterrefine.broker.state import find_running_broker

    running = find_running_broker(config.data_dir)
    if running is None:
        raise ConfigError(NO_BROKER_MESSAGE)
    return running.bootstrap_servers


def add_kafka_args(parser: argparse.ArgumentParser) -> None:
    """The options of every command that talks to Kafka, defined here once, in three groups.

    Each command's ``--help`` lists its own options first, then these under their headings.
    """
    general = parser.add_argument_group("config and logging")
    add = general.add_argument
    add("--config", metavar="FILE", help="TOML config file (see examples/iterrefine.toml)")
    add("--data-dir", help="where the embedded broker keeps its state (default .iterrefine)")
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add("--log-json", action="store_true", default=None,
        help="JSON log lines even on a terminal (default: JSON when not a terminal)")
    kafka = parser.add_argument_group(
        "Kafka", "The cluster and its topics (default: the embedded broker). The same on "
        "every command that talks to Kafka; [kafka] in --config sets them too.")
    add = kafka.add_argument
    add("--bootstrap", metavar="HOST:PORT",
        help="Kafka bootstrap servers (default: the embedded broker)")
    add("--topic-prefix", help="topic name prefix (default iterrefine.)")
    add("--partitions", type=int, help="partitions per topic when creating them (default 8)")
    add("--client-id", help="Kafka client id, as seen in broker logs and quotas (iterrefine)")
    security = parser.add_argument_group(
        "Kafka security", "SASL and TLS for real clusters. Secrets are read from an environment "
        "variable or a file, never taken as a flag.")
    sec = security.add_argument
    sec("--security-protocol", choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
        help="default PLAINTEXT")
    sec("--sasl-mechanism", choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
    sec("--sasl-username", metavar="USER")
    sec("--sasl-password-env", metavar="VAR",
        help="environment variable holding the SASL password")
    sec("--sasl-password-file", metavar="FILE",
        help="file holding the SASL password (e.g. a mounted Kubernetes secret)")
    sec("--ssl-cafile", metavar="FILE", help="CA bundle that signed the brokers' certificates")
    sec("--ssl-certfile", metavar="FILE", help="client certificate (mutual TLS)")
    sec("--ssl-keyfile", metavar="FILE", help="client certificate's private key (mutual TLS)")


def add_llm_args(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--preset", choices=["paper"],
        help="paper: the published setting of Hu et al. (task filter, cluster quota, "
        "temperature 0.6, their token limits, 3 rounds, keep_last_revision, complete "
        "alignment, no position swap); the config file and other flags override it")
    add("--llm-base-url", metavar="URL",
        help="OpenAI-compatible base URL for both roles (e.g. http://vllm:8000/v1)")
    add("--strong-model", metavar="MODEL", help="judge/refiner/aligner model")
    add("--backbone-model", metavar="MODEL", help="model that answers instructions")
    add("--strong-base-url", metavar="URL", help="base URL for the strong role only")
    add("--backbone-base-url", metavar="URL", help="base URL for the backbone role only")
    add("--api-key-env", metavar="VAR",
        help="environment variable holding the API key (never pass the key itself)")
    add("--llm-concurrency", type=int, metavar="N", help="max concurrent requests per role")
    # A value is required: an optional one would swallow the INPUT that follows the flag.
    add("--structured-output", metavar="DIALECT",
        choices=["json_schema", "json_object", "off", "auto"],
        help="structured output for both roles: json_schema (OpenAI, vLLM), json_object "
        "(llama.cpp), off, or auto (default: a probe request finds what the server enforces)")
    add("--max-rounds", type=int, help="refinement rounds before giving up (default 3)")
    add("--exhausted-policy", choices=["keep_original", "drop", "keep_last_revision"],
        help="items that never converged: keep the original (default), drop, or align the "
        "last revision anyway (marked converged=false)")
    add("--alignment-mode", choices=["anchored", "complete"],
        help="output alignment: anchored (default; no new facts) or complete (fully answer "
        "the revised instruction, keeping the original's facts)")
    add("--position-swap", action="store_true", default=None,
        help="review in both orders; a revision converges only if it wins both")
    add_cache_args(parser)


def add_cache_args(parser: argparse.ArgumentParser) -> None:
    """``--cache MODE`` / ``--no-cache``: the LLM response cache, on by default."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--cache", choices=["on", "off", "refresh"], default=None,
        help="LLM response cache under --data-dir: on (default) answers a repeated question "
        "from disk, so a rerun pays only for calls not yet answered; refresh asks again and "
        "overwrites; off neither reads nor writes")
    group.add_argument("--no-cache", dest="cache", action="store_const", const="off",
                       help="same as --cache off")


def _llm_overrides(args: argparse.Namespace) -> dict[str, Any]:
    roles: dict[str, Any] = {}
    for role in ("strong", "backbone"):
        model = getattr(args, f"{role}_model", None)
        base_url = getattr(args, f"{role}_base_url", None) or getattr(args, "llm_base_url", None)
        if model is None and base_url is None:
            continue
        entry: dict[str, Any] = {"model": model, "base_url": base_url}
        entry["api_key_env"] = getattr(args, "api_key_env", None)
        entry["max_concurrency"] = getattr(args, "llm_concurrency", None)
        entry["structured_output"] = getattr(args, "structured_output", None)
        roles[role] = {k: v for k, v in entry.items() if v is not None}
    return roles


#: Flags that map one to one onto ``KafkaConfig`` fields of the same name.
_KAFKA_FLAGS = (
    "client_id", "group_instance_id", "security_protocol", "sasl_mechanism", "sasl_username",
    "sasl_password_env", "sasl_password_file", "ssl_cafile", "ssl_certfile", "ssl_keyfile",
)


def config_from_args(args: argparse.Namespace) -> Config:
    """The TOML file (if any) with the command-line flags on top."""
    overrides: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": getattr(args, "bootstrap", None),
            "topic_prefix": getattr(args, "topic_prefix", None),
            "partitions": getattr(args, "partitions", None),
            **{name: getattr(args, name, None) for name in _KAFKA_FLAGS},
        },
        "pipeline": {
            "max_rounds": getattr(args, "max_rounds", None),
            "exhausted_policy": getattr(args, "exhausted_policy", None),
            "position_swap": getattr(args, "position_swap", None),
            "alignment_mode": getattr(args, "alignment_mode", None),
        },
        "broker": {"storage": getattr(args, "broker_storage", None)},
        "data_dir": getattr(args, "data_dir", None),
        "metrics_port": getattr(args, "metrics_port", None),
        "metrics_host": getattr(args, "metrics_host", None),
        "cache": {"mode": getattr(args, "cache", None)},
        "preset": getattr(args, "preset", None),
        "max_cost": getattr(args, "max_cost", None),
    }
    llm = _llm_overrides(args)
    if llm:
        overrides["llm"] = llm
    # Commands that call LLMs keep their answers unless told otherwise.
    defaults = {"cache": {"mode": "on"}} if hasattr(args, "cache") else None
    config = load_config(getattr(args, "config", None), overrides, defaults)
    # Under --llm sim the simulator is every role's endpoint: a table may hold only prices.
    if getattr(args, "llm", None) != "sim":
        check_endpoints(config)
    return config


def require_llm(config: Config) -> None:
    missing = [role for role in ("strong", "backbone") if role not in config.llm]
    if missing:
        raise ConfigError(NO_LLM_MESSAGE)
