"""Prices work with any LLM, the simulator included; ``--llm sim`` wins over named endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from iterrefine.app.run import sim_roles
from iterrefine.cli import build_parser
from iterrefine.cli.common import config_from_args
from iterrefine.config import load_config
from iterrefine.errors import ConfigError
from iterrefine.sim import SimConfig

PRICES_ONLY = """
[llm.strong]
price_in_per_mtok = 3.0
price_out_per_mtok = 15.0
"""

WITH_ENDPOINT = """
[llm.strong]
base_url = "http://vllm.invalid:8000/v1"
model = "big"
api_key_env = "SOME_KEY"
max_concurrency = 7
price_in_per_mtok = 1.5
"""


def _args(tmp_path: Path, toml: str, *flags: str) -> object:
    config = tmp_path / "c.toml"
    config.write_text(toml)
    return build_parser("run").parse_args(
        ["run", "in.jsonl", "-o", "out.jsonl", "--config", str(config), *flags])


@pytest.mark.unit
def test_a_table_with_only_prices_runs_on_the_simulator_and_keeps_its_prices(
    tmp_path: Path,
) -> None:
    """`[llm.strong]` with prices only + `--llm sim`: the sim answers at those prices."""
    config = config_from_args(_args(tmp_path, PRICES_ONLY, "--llm", "sim"))
    on_sim = sim_roles(config, "http://127.0.0.1:1/v1", SimConfig())
    strong = on_sim.llm["strong"]
    assert (strong.base_url, strong.model) == ("http://127.0.0.1:1/v1", "sim-strong")
    assert (strong.price_in_per_mtok, strong.price_out_per_mtok) == (3.0, 15.0)
    assert strong.structured_output == "json_schema"  # the sim's endpoint settings
    assert on_sim.llm["backbone"].model == "sim-backbone"


@pytest.mark.unit
def test_the_simulator_wins_over_an_endpoint_the_config_names(tmp_path: Path) -> None:
    """A config's base_url no longer sends a `--llm sim` run to a real endpoint."""
    config = config_from_args(_args(tmp_path, WITH_ENDPOINT, "--llm", "sim"))
    strong = sim_roles(config, "http://127.0.0.1:1/v1", SimConfig()).llm["strong"]
    assert (strong.base_url, strong.model, strong.api_key_env) == (
        "http://127.0.0.1:1/v1", "sim-strong", None)
    assert (strong.max_concurrency, strong.price_in_per_mtok) == (7, 1.5)


@pytest.mark.unit
def test_a_table_without_an_endpoint_is_refused_when_no_simulator_answers(
    tmp_path: Path,
) -> None:
    """Without `--llm sim`, prices alone are a clear error naming the role and the fix."""
    with pytest.raises(ConfigError, match=r"'strong' needs both a model and a base URL.*--llm sim"):
        config_from_args(_args(tmp_path, PRICES_ONLY))
    config = load_config(None, {"llm": {"strong": {"price_in_per_mtok": 1.0}}})
    assert config.llm["strong"].base_url == ""  # the API path checks in run_pipeline
