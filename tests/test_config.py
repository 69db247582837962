"""Configuration: TOML file plus flags into one frozen value, with clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from iterrefine.config import Config, load_config
from iterrefine.config.presets import PAPER, TOGETHER, preset_rows
from iterrefine.errors import ConfigError

ROOT = Path(__file__).parent.parent


@pytest.mark.unit
def test_example_config_loads() -> None:
    """examples/iterrefine.toml parses into a Config with both LLM roles."""
    config = load_config(ROOT / "examples" / "iterrefine.toml")
    assert set(config.llm) == {"strong", "backbone"}
    assert config.pipeline.max_rounds == 3


@pytest.mark.unit
def test_flags_override_file_values(tmp_path: Path) -> None:
    """An override wins over the file; an unset (None) override leaves the file alone."""
    path = tmp_path / "c.toml"
    path.write_text('[pipeline]\nmax_rounds = 5\n[kafka]\ntopic_prefix = "x."\n')
    config = load_config(path, {"pipeline": {"max_rounds": 2}, "kafka": {"topic_prefix": None}})
    assert config.pipeline.max_rounds == 2
    assert config.kafka.topic_prefix == "x."


@pytest.mark.unit
def test_bad_config_is_a_config_error(tmp_path: Path) -> None:
    """A wrong type in the file gives ConfigError naming the field."""
    path = tmp_path / "c.toml"
    path.write_text('[pipeline]\nmax_rounds = "three"\n')
    with pytest.raises(ConfigError, match="max_rounds"):
        load_config(path)


def test_run_without_llm_says_both_options(tmp_path: Path) -> None:
    """`iterrefine run` with no LLM stops with a message naming --llm sim and the endpoint flags."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"instruction": "x", "output": "y"}\n')
    result = subprocess.run(
        [sys.executable, "-m", "iterrefine.cli", "run", str(source), "-o", str(tmp_path / "o")],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert result.returncode == 2
    assert "--llm sim" in result.stderr and "--llm-base-url" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_zero_workers_says_what_to_pass(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"instruction": "x", "output": "y"}\n')
    result = subprocess.run(
        [sys.executable, "-m", "iterrefine.cli", "run", str(source), "-o", str(tmp_path / "o"),
         "--llm", "sim", "--workers", "0"],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert result.returncode == 2
    assert "--workers must be at least 1" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.unit
def test_paper_preset_sets_the_published_setting() -> None:
    """preset = "paper": the paper's rounds, policy, alignment, temperature and token limits."""
    config = load_config(overrides={"preset": "paper"})
    pipeline = config.pipeline
    assert (pipeline.max_rounds, pipeline.exhausted_policy, pipeline.alignment_mode,
            pipeline.position_swap) == (3, "keep_last_revision", "complete", False)
    assert config.llm_defaults.temperature == 0.6
    limits = pipeline.max_tokens
    assert (limits.answer, limits.score, limits.evaluate, limits.refine, limits.review,
            limits.align) == (2000, 2000, 2048, 4096, 4096, 4096)


@pytest.mark.unit
def test_preset_sits_under_the_file_and_the_flags(tmp_path: Path) -> None:
    """Precedence: defaults < preset < config file < flags; the summary rows say which won."""
    path = tmp_path / "c.toml"
    path.write_text('preset = "paper"\n[pipeline]\nmax_rounds = 5\nalignment_mode = "anchored"\n'
                    "[llm.strong]\nbase_url = \"http://x/v1\"\nmodel = \"m\"\n"
                    "[llm.backbone]\nbase_url = \"http://x/v1\"\nmodel = \"b\"\n"
                    "temperature = 0.0\n")
    config = load_config(path, {"pipeline": {"alignment_mode": "complete",
                                             "exhausted_policy": "drop"}})
    assert config.preset == "paper"
    assert config.pipeline.max_rounds == 5  # file over preset
    assert config.pipeline.alignment_mode == "complete"  # flag over file
    assert config.pipeline.exhausted_policy == "drop"  # flag over preset
    assert config.llm["strong"].temperature == 0.6  # preset default for a role
    assert config.llm["backbone"].temperature == 0.0  # the role's own value wins
    rows = {row.key: row for row in preset_rows(config)}
    assert rows["pipeline.max_rounds"].source == "overridden"
    assert rows["pipeline.max_rounds"].effective == 5
    assert rows["pipeline.exhausted_policy"].source == "overridden"
    assert rows["pipeline.alignment_mode"].source == "preset"
    assert rows["llm.backbone.temperature"].effective == 0.0
    assert "llm.strong.temperature" not in rows


@pytest.mark.unit
def test_preset_flag_overrides_no_preset_in_the_file_and_unknown_names_fail() -> None:
    """--preset works without a file; an unknown preset name is a ConfigError."""
    assert load_config(overrides={"preset": "paper"}).preset == "paper"
    assert load_config().preset is None and load_config().pipeline.exhausted_policy == (
        "keep_original")
    with pytest.raises(ConfigError, match="preset"):
        load_config(overrides={"preset": "nope"})


@pytest.mark.unit
def test_preset_keys_this_build_lacks_are_skipped_and_reported() -> None:
    """Preset keys with no setting in this build, or whose group is incomplete, are skipped."""
    config = load_config(overrides={"preset": "paper"})
    rows = {row.key: row for row in preset_rows(config)}
    incomplete = {key for group in TOGETHER if not all(_has(config, k) for k in group)
                  for key in group}
    for key in PAPER:
        applied = _has(config, key) and key not in incomplete
        assert rows[key].source == ("preset" if applied else "unavailable")
    if "pipeline.routing_policy" in incomplete:  # the quota policy without its [selection]
        assert config.pipeline.routing_policy == "threshold"


def _has(config: Config, key: str) -> bool:
    node: object = config
    for part in key.split("."):
        if not hasattr(node, part):
            return False
        node = getattr(node, part)
    return True


@pytest.mark.unit
def test_cli_flags_override_the_preset_flag() -> None:
    """`run --preset paper --max-rounds 2 --alignment-mode anchored`: the flags win."""
    from iterrefine.cli import build_parser
    from iterrefine.cli.common import config_from_args

    args = build_parser().parse_args([
        "run", "in.jsonl", "-o", "out.jsonl", "--preset", "paper", "--max-rounds", "2",
        "--alignment-mode", "anchored"])
    config = config_from_args(args)
    assert (config.preset, config.pipeline.max_rounds) == ("paper", 2)
    assert config.pipeline.alignment_mode == "anchored"
    assert config.pipeline.exhausted_policy == "keep_last_revision"
