"""docs/paper.md against the code: its settings table is generated from the preset and the
config defaults, and every `key = value` it writes is the default or the preset's value."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, get_type_hints

import msgspec
import pytest

from iterrefine.config import Config
from iterrefine.config.presets import PAPER, PRESETS

pytestmark = pytest.mark.unit

PAGE = Path(__file__).parent.parent / "docs" / "paper.md"
#: Decision settings the page names besides the preset's own keys.
ALSO_DOCUMENTED = (
    "pipeline.feedback_max_entries", "pipeline.feedback_max_chars", "pipeline.parse_retries",
    "pipeline.high_min_mean_score", "selection.difficulty_metric", "selection.max_prompt_chars",
)
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"
#: `pipeline.max_rounds = 3` or `max_rounds = 3`, inside backticks.
MENTION = re.compile(r"`([a-z_][a-z0-9_.]*) = ([^`]+)`")


def default_of(key: str) -> Any:
    node: Any = Config()
    for part in key.split("."):
        node = getattr(node, part)
    return node


def literal(value: Any) -> str:
    """A value as the config file writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def settings_table() -> str:
    rows = ["| Setting | Default | `--preset paper` |", "| --- | --- | --- |"]
    for key in sorted({*PAPER, *ALSO_DOCUMENTED}):
        preset = f"`{literal(PAPER[key])}`" if key in PAPER else "as default"
        rows.append(f"| `{key}` | `{literal(default_of(key))}` | {preset} |")
    return "\n".join(rows)


#: Names the page writes as `name = value` that are not settings: wire and item fields,
#: and the placeholder in the sentence about this test.
NOT_SETTINGS = frozenset({"finish_reason", "converged", "key"})


def setting_keys(root: type[msgspec.Struct] = Config, prefix: str = "") -> list[str]:
    """Every setting's dotted key, through the nested tables."""
    keys: list[str] = []
    for name, hint in get_type_hints(root).items():
        if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
            keys += setting_keys(hint, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def resolve(name: str) -> str | None:
    """The dotted key a name on the page means (its last part will do when unique)."""
    keys = setting_keys()
    if name in keys:
        return name
    found = [key for key in keys if key.rsplit(".", 1)[-1] == name]
    return found[0] if len(found) == 1 else None


def test_the_settings_table_is_the_presets_and_the_defaults() -> None:
    """The page's settings table equals the one generated from PAPER and Config()."""
    text = PAGE.read_text()
    assert BEGIN in text and END in text
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    expected = settings_table()
    assert table == expected, (
        f"docs/paper.md's settings table is out of date; paste this between the markers:\n"
        f"{expected}")


def test_every_setting_the_page_writes_is_a_default_or_the_presets() -> None:
    """A `key = value` on the page names a real setting and its default or preset value."""
    wrong: list[str] = []
    mentions = MENTION.findall(PAGE.read_text())
    for name, written in mentions:
        key = resolve(name)
        if key is None:
            if name not in NOT_SETTINGS:
                wrong.append(f"`{name} = {written}`: no such setting")
            continue
        value = tomllib.loads(f"v = {written}")["v"]
        allowed = [default_of(key), *([PAPER[key]] if key in PAPER else [])]
        if key == "preset":
            allowed += list(PRESETS)
        if value not in allowed:
            wrong.append(f"`{name} = {written}`: the default is {literal(allowed[0])}"
                         + (f", the preset's {literal(allowed[1])}" if len(allowed) > 1 else ""))
    assert len(mentions) >= 10, "the page names its settings as `key = value`"
    assert not wrong, "docs/paper.md disagrees with the code:\n" + "\n".join(wrong)


def test_the_preset_sets_only_real_settings() -> None:
    """Every key of the paper preset is a setting of this build (nothing silently unused)."""
    for key in PAPER:
        default_of(key)
