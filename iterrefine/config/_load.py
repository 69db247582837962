"""Reading a config: TOML file, preset and flags, merged once into a :class:`Config`.

Parsed once in ``main()`` and passed down as a value; no module reads the environment
at import time.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec

from iterrefine.config._settings import Config
from iterrefine.config._tables import merge
from iterrefine.config.presets import apply_preset
from iterrefine.errors import ConfigError


def _with_role_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """Give each ``[llm.ROLE]`` table the ``[llm_defaults]`` it does not set itself."""
    defaults = raw.get("llm_defaults")
    roles = raw.get("llm")
    if not isinstance(defaults, dict) or not isinstance(roles, dict):
        return raw
    filled = {name: {**defaults, **table} if isinstance(table, dict) else table
              for name, table in roles.items()}
    return {**raw, "llm": filled}


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> Config:
    """Read a TOML file (optional) over ``defaults`` and apply overrides.

    Unknown keys are errors (a misspelt ``max_round`` must not run with the default);
    raise ConfigError saying what is wrong.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        paths = raw.get("import_paths")
        if isinstance(paths, list):  # anything else is left for the type check below
            here = Path(path).resolve().parent
            raw["import_paths"] = [str(here / p) if isinstance(p, str) else p for p in paths]
    # defaults < preset < file < flags: a preset stands for settings the user chose.
    raw = merge(raw, overrides or {})
    preset = raw.get("preset")
    if isinstance(preset, str):
        raw = apply_preset(preset, raw, Config)
    raw = _with_role_defaults(merge(defaults or {}, raw))
    _upgrade_structured_output(raw)
    try:
        return msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        hint = (" (a misspelt or unsupported key: see examples/iterrefine.toml for the valid "
                "ones)" if "unknown field" in str(exc) else "")
        raise ConfigError(f"invalid configuration: {exc}{hint}") from None


def check_endpoints(config: Config) -> None:
    """Every ``[llm.ROLE]`` names a model and a base URL (unless the simulator answers it)."""
    for role, entry in config.llm.items():
        if not entry.model or not entry.base_url:
            raise ConfigError(
                f"LLM role {role!r} needs both a model and a base URL (a table with only "
                "prices or limits is for --llm sim, where the simulator answers the role)")


def _upgrade_structured_output(raw: dict[str, Any]) -> None:
    """``structured_output = true/false`` (older configs) as ``"json_schema"``/``"off"``."""
    roles = raw.get("llm")
    if not isinstance(roles, dict):
        return
    for role in roles.values():
        if isinstance(role, dict) and isinstance(role.get("structured_output"), bool):
            role["structured_output"] = "json_schema" if role["structured_output"] else "off"
