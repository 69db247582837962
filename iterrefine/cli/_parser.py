"""The command line's parser: a mistyped flag, command or choice gets a suggestion.

argparse reports a flag it does not know from the top-level parser, with the top-level
usage, and names no alternative. Here the error comes from the (sub)command that was
typed, with its own usage, and names the closest flag, command or choice it knows:
``unrecognized arguments: --max-round (did you mean --max-rounds?)``. Flags are still
never abbreviated (``allow_abbrev=False`` everywhere): a suggestion is never applied.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<value>[^']*)' \(choose from (?P<choices>.*)\)")


def closest(word: str, known: Iterable[str]) -> str | None:
    """The one known word ``word`` was probably meant to be, if any is close enough."""
    found = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return found[0] if found else None


#: Option groups every Kafka command shares (:func:`iterrefine.cli.common.add_kafka_args`):
#: listed under their headings in ``--help``, left out of the usage line.
SHARED_GROUPS = ("config and logging", "Kafka", "Kafka security")


class _Formatter(argparse.HelpFormatter):
    """Usage lines without the shared option groups (16 flags, the same on every command)."""

    def _format_usage(self, usage: str | None, actions: Iterable[argparse.Action],
                      groups: Iterable[argparse._MutuallyExclusiveGroup],
                      prefix: str | None) -> str:
        actions = list(actions)
        own = [a for a in actions if _group_of(a) not in SHARED_GROUPS]
        text = super()._format_usage(usage, own, groups, prefix)
        if usage is None and len(own) < len(actions):
            text = text.rstrip("\n") + " [shared options]\n\n"
        return text


def _group_of(action: argparse.Action) -> str | None:
    """The title of the option group ``action`` was added to (argparse records the group)."""
    title = getattr(getattr(action, "container", None), "title", None)
    return title if isinstance(title, str) else None


class SuggestingParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors suggest what was probably meant."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def parse_args(  # type: ignore[override]  # argparse's overloads; same behaviour
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            chosen = self._chosen(parsed)
            chosen.error(chosen.unrecognized(extras))
        return parsed

    def _chosen(self, parsed: argparse.Namespace) -> SuggestingParser:
        """The innermost (sub)command ``parsed`` went to: it knows the flags that were meant."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):  # argparse keeps them only here
                child = action.choices.get(getattr(parsed, action.dest, None) or "")
                if isinstance(child, SuggestingParser):
                    return child._chosen(parsed)
        return self

    def unrecognized(self, extras: Sequence[str]) -> str:
        flags = [s for action in self._actions for s in action.option_strings
                 if s.startswith("--")]
        hints: dict[str, str] = {}
        for word in extras:
            flag = word.split("=", 1)[0]
            guess = closest(flag, flags) if flag.startswith("--") else None
            if guess is not None:
                hints[flag] = guess
        message = f"unrecognized arguments: {' '.join(extras)}"
        if len(hints) == 1:
            message += f"; did you mean {next(iter(hints.values()))}?"
        elif hints:
            message += "; did you mean " + ", ".join(
                f"{guess} (for {flag})" for flag, guess in hints.items()) + "?"
        return message

    def error(self, message: str) -> NoReturn:
        match = _INVALID_CHOICE.search(message)
        if match is not None:
            choices = [c.strip().strip("'") for c in match["choices"].split(",")]
            guess = closest(match["value"], choices)
            if guess is not None:
                message += f"; did you mean {guess!r}?"
        super().error(message)
