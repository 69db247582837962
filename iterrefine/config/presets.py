"""Named presets: one switch for a published setting, as plain config overrides.

A preset is a flat dict of dotted config keys. It sits between the built-in
defaults and everything the user wrote: defaults < preset < config file < flags.
So ``preset = "paper"`` with ``max_rounds = 5`` in the file runs five rounds and
says so in the run summary.

A key this build does not know (a setting another part of iterrefine adds later,
e.g. the selection keys) is left out rather than failing the run, and so are keys
that only work together with one it does not know (:data:`TOGETHER`); the summary
marks them ``unavailable``: the preset never claims a setting it could not apply.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, get_args, get_type_hints

import msgspec

from iterrefine.config._tables import merge, nest
from iterrefine.errors import ConfigError

if TYPE_CHECKING:
    from iterrefine.config._settings import Config

__all__ = ["PAPER", "PRESETS", "TOGETHER", "PresetRow", "apply_preset", "lookup", "preset_rows"]

#: Hu et al.'s published setting ("From Selection to Refinement", ACL 2026), as their
#: paper, figure and code fix it; docs/paper.md gives each setting's source.
PAPER: Final[Mapping[str, Any]] = {
    # IQD: the task filter (reasoning or logical inference required) is the paper's whole
    # data reduction; per-cluster quota selection over 132 k-means clusters, top 80% High.
    "pipeline.task_filter": True,
    # The paper's code drops an item whose judge answer it cannot read, the filter's
    # answer included.
    "pipeline.task_filter_unstated": "reject",
    "pipeline.routing_policy": "cluster_quota",
    "selection.k": 132,
    "selection.k_ratio": 0.8,
    # Every call samples at temperature 0.6.
    "llm_defaults.temperature": 0.6,
    # max_tokens per call as published.
    "pipeline.max_tokens.answer": 2000,
    "pipeline.max_tokens.score": 2000,
    "pipeline.max_tokens.evaluate": 2048,
    "pipeline.max_tokens.refine": 4096,
    "pipeline.max_tokens.review": 4096,
    "pipeline.max_tokens.align": 4096,
    # ...and not lowered to fit the item (the loop guard still stops a looping answer).
    "pipeline.fit_max_tokens": False,
    # FIR: three rounds; at the cap the last revision is kept and aligned; A and B are
    # always shown in the same order (no position swap).
    "pipeline.max_rounds": 3,
    "pipeline.exhausted_policy": "keep_last_revision",
    "pipeline.position_swap": False,
    # OA: the paper's figure completes the output for the revised instruction (and the
    # last revision of an exhausted item may ask for more than the original covers).
    "pipeline.alignment_mode": "complete",
    # The paper scores items once, before refinement: no second score of refined items.
    "pipeline.rescore_refined": False,
}

PRESETS: Final[Mapping[str, Mapping[str, Any]]] = {"paper": PAPER}

#: Keys that only make sense together: applied all or none. The quota routing policy
#: arrives with its ``[selection]`` table; naming it without that table would make the
#: route stage fail at start-up.
TOGETHER: Final[tuple[frozenset[str], ...]] = (
    frozenset({"pipeline.routing_policy", "selection.k", "selection.k_ratio"}),
)


class PresetRow(msgspec.Struct, frozen=True, kw_only=True):
    """One setting of a preset as the run used it."""

    key: str
    preset: Any
    effective: Any = None
    #: ``preset`` (applied), ``overridden`` (the user set another value), or
    #: ``unavailable`` (this build has no such setting).
    source: str = "preset"


def _struct_in(annotation: Any) -> type[msgspec.Struct] | None:
    """The Struct an annotation names (``X`` or ``X | None``), if any."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, msgspec.Struct):
            return candidate
    return None


def _known(root: type[msgspec.Struct], key: str) -> bool:
    """Whether the dotted ``key`` names a setting of ``root`` (through nested Structs)."""
    current: type[msgspec.Struct] | None = root
    *parents, leaf = key.split(".")
    for part in parents:
        if current is None or part not in current.__struct_fields__:
            return False
        current = _struct_in(get_type_hints(current)[part])
    return current is not None and leaf in current.__struct_fields__


def lookup(name: str) -> Mapping[str, Any]:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown preset {name!r}; choose from {', '.join(sorted(PRESETS))}"
        ) from None


def _applicable(root: type[msgspec.Struct], keys: Iterable[str]) -> set[str]:
    """The keys this build can take: known ones, and of a :data:`TOGETHER` group only
    when every key of the group is known."""
    known = {key for key in keys if _known(root, key)}
    for group in TOGETHER:
        if not group <= known:
            known -= group
    return known


def apply_preset(name: str, raw: dict[str, Any], root: type[msgspec.Struct]) -> dict[str, Any]:
    """``raw`` (file + flags, as a TOML-shaped dict) over preset ``name``'s applicable keys."""
    preset = lookup(name)
    applicable = _applicable(root, preset)
    return merge(nest({k: v for k, v in preset.items() if k in applicable}), raw)


def _effective(config: Config, key: str) -> Any:
    """The value of dotted ``key`` in ``config``; None when this build has no such setting."""
    node: Any = config
    for part in key.split("."):
        if not hasattr(node, part):
            return None
        node = getattr(node, part)
    return node


def preset_rows(config: Config) -> list[PresetRow]:
    """Each setting of ``config.preset`` with the value the run actually used."""
    name = config.preset
    if name is None:
        return []
    rows: list[PresetRow] = []
    preset = lookup(name)
    applicable = _applicable(type(config), preset)
    for key, value in preset.items():
        effective = _effective(config, key)
        if key not in applicable:
            rows.append(PresetRow(key=key, preset=value, effective=effective,
                                  source="unavailable"))
            continue
        source = "preset" if effective == value else "overridden"
        rows.append(PresetRow(key=key, preset=value, effective=effective, source=source))
        if key == "llm_defaults.temperature":
            # A role's own temperature wins over the default; show the ones that differ.
            for role, role_config in sorted(config.llm.items()):
                if role_config.temperature != value:
                    rows.append(PresetRow(key=f"llm.{role}.temperature", preset=value,
                                          effective=role_config.temperature,
                                          source="overridden"))
    return rows
