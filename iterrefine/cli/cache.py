"""``iterrefine cache stats|clear``: the LLM response cache under the data dir."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import msgspec

from iterrefine.cli.common import config_from_args
from iterrefine.llm.cache import CacheStats, clear, read_stats


def register(subparsers: Any) -> None:  # argparse's _SubParsersAction is private
    parser = subparsers.add_parser(
        "cache",
        help="LLM response cache: stats (entries, size, hits) or clear",
        description=(
            "The answers `run` and `worker` keep so that a rerun pays only for calls not yet "
            "answered (<data-dir>/llm-cache.sqlite3, or cache.path in the config file)."
        ),
    )
    parser.add_argument("action", choices=["stats", "clear"])
    parser.add_argument("--data-dir", help="where the cache lives (default .iterrefine)")
    parser.add_argument("--config", metavar="FILE", help="TOML config file (for cache.path)")
    parser.add_argument("--json", action="store_true", help="machine-readable stats")
    parser.set_defaults(func=cmd_cache)


def describe_cache(stats: CacheStats | None, path: Path) -> str:
    if stats is None:
        return f"LLM response cache: none yet at {path}"
    if stats.damaged is not None:
        return (f"LLM response cache {stats.path}: damaged ({stats.damaged}); the next run "
                "moves it aside and starts a new one")
    return (
        f"LLM response cache {stats.path}: {stats.entries} answers, "
        f"{stats.bytes / 1e6:.1f} MB; lifetime {stats.hits} hits (calls not paid for), "
        f"{stats.misses} misses, {stats.tokens_saved} tokens saved"
        + (f", {stats.rejected} entries refused (seal mismatch)" if stats.rejected else "")
    )


def cmd_cache(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    path = config.cache_path()
    if args.action == "clear":
        print(f"iterrefine: deleted {clear(path)} cached answers from {path}")
        return 0
    stats = read_stats(path)
    if args.json:
        print(json.dumps(msgspec.to_builtins(stats)))
    else:
        print(describe_cache(stats, path))
    return 0
