"""Configuration: TOML file plus flags into one frozen value, with clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from iterrefine.config import load_config
from iterrefine.errors import ConfigError

ROOT = Path(__file__).parent.parent


def test_example_config_loads() -> None:
    """examples/iterrefine.toml parses into a Config with both LLM roles."""
    config = load_config(ROOT / "examples" / "iterrefine.toml")
    assert set(config.llm) == {"strong", "backbone"}
    assert config.pipeline.max_rounds == 3


def test_flags_override_file_values(tmp_path: Path) -> None:
    """An override wins over the file; an unset (None) override leaves the file alone."""
    path = tmp_path / "c.toml"
    path.write_text('[pipeline]\nmax_rounds = 5\n[kafka]\ntopic_prefix = "x."\n')
    config = load_config(path, {"pipeline": {"max_rounds": 2}, "kafka": {"topic_prefix": None}})
    assert config.pipeline.max_rounds == 2
    assert config.kafka.topic_prefix == "x."


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
