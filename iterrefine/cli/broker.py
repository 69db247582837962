"""``iterrefine broker up|status|down``: the embedded broker as a background service.

``up`` starts Tansu (and SeaweedFS with ``--durable``) detached from the
terminal and records them in ``DATA_DIR/broker.json``; later commands (``run``,
workers, ``status``, ``down``) find the broker through that file. ``up`` is
idempotent, and a state file whose processes are gone is cleaned up.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import structlog

from iterrefine.broker.embedded import EmbeddedBroker
from iterrefine.broker.state import (
    STATE_FILE,
    BrokerState,
    is_live,
    read_state,
    state_lock,
    stop_processes,
    write_state,
)

log = structlog.get_logger()

DEFAULT_DATA_DIR = ".iterrefine"
#: Not Kafka's 9092: a local Kafka (or a compose stack's) often holds that one.
DEFAULT_PORT = 19092


def _describe(state: BrokerState) -> str:
    storage = f"durable, weed pid {state.weed_pid}" if state.durable else "memory storage"
    return f"{state.bootstrap_servers} (pid {state.pid}, {storage})"


def cmd_up(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    with state_lock(data_dir):
        state = read_state(data_dir)
        if state is not None and is_live(state):
            print(f"broker already running at {_describe(state)}")
            if state.durable != args.durable:
                wanted = "durable" if args.durable else "memory"
                print(f"note: it was not started as a {wanted} broker; to change that, run "
                      f"`iterrefine broker down --data-dir {args.data_dir}` first")
            return 0
        if state is not None:
            log.warning("broker.stale_state_removed", pid=state.pid, port=state.port)
            stop_processes(state)  # e.g. weed left behind by a Tansu that died
            (data_dir / STATE_FILE).unlink(missing_ok=True)
        broker = EmbeddedBroker(port=args.port, data_dir=data_dir, durable=args.durable)
        broker.start()
        try:
            assert broker.pid is not None and broker.port is not None
            state = BrokerState(
                bootstrap_servers=broker.bootstrap_servers, port=broker.port, pid=broker.pid,
                durable=args.durable, weed_pid=broker.weed_pid, started_at=time.time(),
            )
            write_state(data_dir, state)
        except BaseException:
            broker.stop()
            raise
        broker.detach()
    print(f"broker running at {state.bootstrap_servers}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    state = read_state(data_dir)
    if state is None:
        print(f"broker not running (no {STATE_FILE} in {data_dir})")
        return 1
    if not is_live(state):
        print(f"broker not running (stale {STATE_FILE}: pid {state.pid} gone or not answering "
              f"on port {state.port}); `iterrefine broker down` cleans it up")
        return 1
    print(f"broker running at {_describe(state)}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    with state_lock(data_dir):
        state = read_state(data_dir)
        if state is None:
            print("broker not running")
            return 0
        stop_processes(state)
        (data_dir / STATE_FILE).unlink(missing_ok=True)
    log.info("broker.down", port=state.port, pid=state.pid, weed_pid=state.weed_pid)
    print(f"broker stopped ({state.bootstrap_servers})")
    return 0


def register(subparsers: Any) -> None:  # argparse's _SubParsersAction is private
    parser = subparsers.add_parser(
        "broker", help="run the embedded Kafka broker in the background",
        description="Start, inspect or stop the embedded Kafka-compatible broker (Tansu).",
    )
    actions = parser.add_subparsers(dest="broker_command", required=True, metavar="ACTION")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        action: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        action.add_argument(
            "--data-dir", default=DEFAULT_DATA_DIR,
            help=f"where the broker keeps its state, logs and data (default {DEFAULT_DATA_DIR})",
        )
        return action

    up = add("up", "start the broker detached; no-op if it is already running")
    up.add_argument("--port", type=int, default=DEFAULT_PORT,
                    help=f"Kafka port on 127.0.0.1 (default {DEFAULT_PORT})")
    up.add_argument("--durable", action="store_true",
                    help="keep topics and offsets in a local S3 store (SeaweedFS) in the data dir")
    up.set_defaults(func=cmd_up)
    add("status", "show whether the broker runs (exit 0) or not (exit 1)").set_defaults(
        func=cmd_status)
    add("down", "stop the broker and remove its state file").set_defaults(func=cmd_down)
