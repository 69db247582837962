"""Configuration as a value (layer 2: imports only the base modules and :mod:`iterrefine.item`).

Parsed once in ``main()`` (TOML file, then preset, then CLI flags) into frozen structs
(:mod:`.settings`) and passed down; no module reads the environment at import time.
:mod:`.presets` holds the named published settings (``preset = "paper"``).
"""

from iterrefine.config._load import check_endpoints, load_config
from iterrefine.config._settings import (
    BrokerConfig,
    CacheConfig,
    Config,
    Dialect,
    KafkaConfig,
    LLMDefaults,
    LLMRoleConfig,
    PipelineConfig,
    RuntimeConfig,
    SelectionConfig,
    StageEntry,
    StaticPartitions,
    StructuredOutput,
    TaskTokenLimits,
    TopicRetention,
)
from iterrefine.config._tables import merge

__all__ = [
    "BrokerConfig",
    "CacheConfig",
    "Config",
    "Dialect",
    "KafkaConfig",
    "LLMDefaults",
    "LLMRoleConfig",
    "PipelineConfig",
    "RuntimeConfig",
    "SelectionConfig",
    "StageEntry",
    "StaticPartitions",
    "StructuredOutput",
    "TaskTokenLimits",
    "TopicRetention",
    "check_endpoints",
    "load_config",
    "merge",
]
