"""The command line for people: typo suggestions, the Kafka options defined once and
grouped, the preset table's keys whole at 80 columns."""

from __future__ import annotations

import argparse
import io

import msgspec
import pytest
from rich.console import Console

from iterrefine.cli import build_parser, main
from iterrefine.cli._parser import SHARED_GROUPS
from iterrefine.config import load_config
from iterrefine.config.presets import preset_rows

pytestmark = pytest.mark.unit

KAFKA_COMMANDS = ("run", "worker", "ingest", "export", "replay", "status", "show", "view")


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(("argv", "usage", "hint"), [
    (["run", "in.jsonl", "-o", "o.jsonl", "--max-round", "3"], "iterrefine run",
     "did you mean --max-rounds?"),
    (["run", "in.jsonl", "-o", "o.jsonl", "--max-round=3"], "iterrefine run",
     "did you mean --max-rounds?"),
    (["status", "--boostrap", "h:1"], "iterrefine status", "did you mean --bootstrap?"),
    (["rnu", "in.jsonl"], "iterrefine", "did you mean 'run'?"),
    (["broker", "upp"], "iterrefine broker", "did you mean 'up'?"),
    (["run", "in.jsonl", "-o", "o.jsonl", "--shape", "alpca"], "iterrefine run",
     "did you mean 'alpaca'?"),
])
def test_a_typo_gets_the_commands_usage_and_a_suggestion(
    argv: list[str], usage: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A misspelled flag, command or choice: exit 2, its own usage, the closest name."""
    err = _error(argv, capsys)
    assert err.startswith(f"usage: {usage} ") and hint in err


def test_a_suggestion_is_never_applied_and_nonsense_gets_none(
    capsys: pytest.CaptureFixture[str]
) -> None:
    """Flags stay unabbreviated (--max-round is an error); far-off words get no guess."""
    err = _error(["run", "in.jsonl", "-o", "o.jsonl", "--lim", "3", "--max-round", "3"], capsys)
    assert "--limit (for --lim), --max-rounds (for --max-round)" in err
    err = _error(["run", "in.jsonl", "-o", "o.jsonl", "--zzzzzz"], capsys)
    assert "unrecognized arguments: --zzzzzz" in err and "did you mean" not in err


def _shared(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    return {group.title: [s for a in group._group_actions for s in a.option_strings]
            for group in parser._action_groups if group.title in SHARED_GROUPS}


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser(name)
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    child: argparse.ArgumentParser = sub.choices[name]
    return child


def test_the_kafka_options_are_one_set_under_their_own_headings() -> None:
    """Every Kafka command has the same shared groups, listed in --help, not in usage."""
    reference = _shared(_subparser("run"))
    assert set(reference) == set(SHARED_GROUPS)
    assert "--bootstrap" in reference["Kafka"]
    assert "--sasl-password-env" in reference["Kafka security"]
    for command in KAFKA_COMMANDS:
        parser = _subparser(command)
        assert _shared(parser) == reference, command
        usage = parser.format_usage()
        assert "--bootstrap" not in usage and "--ssl-keyfile" not in usage
        assert "[shared options]" in usage
        text = parser.format_help()
        assert "\nKafka security:\n" in text and "--ssl-keyfile" in text


def test_the_preset_table_keeps_every_key_whole_at_80_columns() -> None:
    """`pipeline.max_tokens.evaluate` and its siblings print in full on an 80-column terminal."""
    from iterrefine.cli.run import preset_table

    config = load_config(None, {"preset": "paper"}, None)
    rows = msgspec.to_builtins(preset_rows(config))
    buffer = io.StringIO()
    Console(file=buffer, width=80).print(preset_table({"name": "paper", "settings": rows}))
    text = buffer.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    for row in rows:
        assert row["key"] in text, row["key"]
