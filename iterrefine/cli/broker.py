"""``iterrefine broker up|status|down``: the embedded broker as a background service.

``up`` starts Tansu (and SeaweedFS with ``--durable``) detached from the
terminal and records them in ``DATA_DIR/broker.json``; later commands (``run``,
workers, ``status``, ``down``) find the broker through that file. ``up`` is
idempotent, and a state file whose processes are gone is cleaned up.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import structlog

from iterrefine._process import pid_runs, stop_pid
from iterrefine.broker import EmbeddedBroker, broker_answers
from iterrefine.errors import BrokerError

log = structlog.get_logger()

DEFAULT_DATA_DIR = ".iterrefine"
DEFAULT_PORT = 9092
STATE_FILE = "broker.json"


class BrokerState(msgspec.Struct, frozen=True, kw_only=True):
    """What ``broker up`` leaves behind for the commands that come after it."""

    bootstrap_servers: str
    port: int
    pid: int
    durable: bool
    weed_pid: int | None = None
    started_at: float = 0.0


_state_decoder = msgspec.json.Decoder(BrokerState)


def read_state(data_dir: Path) -> BrokerState | None:
    path = data_dir / STATE_FILE
    try:
        return _state_decoder.decode(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError) as exc:
        raise BrokerError(
            f"cannot read {path}: {exc}. If no broker is running, delete the file."
        ) from exc


def _write_state(data_dir: Path, state: BrokerState) -> None:
    tmp = data_dir / f".{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(state)) + b"\n")
    os.replace(tmp, data_dir / STATE_FILE)


def _is_live(state: BrokerState) -> bool:
    if not (pid_runs(state.pid, "tansu") and broker_answers(state.port)):
        return False
    return state.weed_pid is None or pid_runs(state.weed_pid, "weed")


def find_running_broker(data_dir: str | os.PathLike[str]) -> BrokerState | None:
    """The broker started by ``broker up`` in ``data_dir``, if it is alive and answering."""
    state = read_state(Path(data_dir).resolve())
    return state if state is not None and _is_live(state) else None


def ensure_broker(
    data_dir: str | os.PathLike[str], port: int | None = None, *, durable: bool = False
) -> tuple[str, EmbeddedBroker | None]:
    """Bootstrap servers of the ``broker up`` broker in ``data_dir``, else of a new one.

    Returns ``(bootstrap, broker)``: ``broker`` is ``None`` when an already running
    background broker is reused, otherwise an in-process :class:`EmbeddedBroker`
    started here, which the caller owns and must ``stop()``. A running broker is
    reused whatever its storage; ``port`` and ``durable`` apply to a new one only.
    """
    running = find_running_broker(data_dir)
    if running is not None:
        log.info("broker.reused", bootstrap=running.bootstrap_servers, pid=running.pid)
        return running.bootstrap_servers, None
    broker = EmbeddedBroker(port=port, data_dir=data_dir, durable=durable)
    broker.start()
    return broker.bootstrap_servers, broker


@contextlib.contextmanager
def _state_lock(data_dir: Path) -> Iterator[None]:
    """Serialize ``up``/``down`` on one data dir, so two ``up`` cannot start two brokers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "broker.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _stop_processes(state: BrokerState) -> None:
    # Tansu first: it must not lose its storage while it may still be writing.
    if pid_runs(state.pid, "tansu"):
        stop_pid(state.pid, timeout_s=10.0)
    if state.weed_pid is not None and pid_runs(state.weed_pid, "weed"):
        stop_pid(state.weed_pid, timeout_s=15.0)


def _describe(state: BrokerState) -> str:
    storage = f"durable, weed pid {state.weed_pid}" if state.durable else "memory storage"
    return f"{state.bootstrap_servers} (pid {state.pid}, {storage})"


def cmd_up(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    with _state_lock(data_dir):
        state = read_state(data_dir)
        if state is not None and _is_live(state):
            print(f"broker already running at {_describe(state)}")
            if state.durable != args.durable:
                wanted = "durable" if args.durable else "memory"
                print(f"note: it was not started as a {wanted} broker; to change that, run "
                      f"`iterrefine broker down --data-dir {args.data_dir}` first")
            return 0
        if state is not None:
            log.warning("broker.stale_state_removed", pid=state.pid, port=state.port)
            _stop_processes(state)  # e.g. weed left behind by a Tansu that died
            (data_dir / STATE_FILE).unlink(missing_ok=True)
        broker = EmbeddedBroker(port=args.port, data_dir=data_dir, durable=args.durable)
        broker.start()
        try:
            assert broker.pid is not None and broker.port is not None
            state = BrokerState(
                bootstrap_servers=broker.bootstrap_servers, port=broker.port, pid=broker.pid,
                durable=args.durable, weed_pid=broker.weed_pid, started_at=time.time(),
            )
            _write_state(data_dir, state)
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
    if not _is_live(state):
        print(f"broker not running (stale {STATE_FILE}: pid {state.pid} gone or not answering "
              f"on port {state.port}); `iterrefine broker down` cleans it up")
        return 1
    print(f"broker running at {_describe(state)}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    with _state_lock(data_dir):
        state = read_state(data_dir)
        if state is None:
            print("broker not running")
            return 0
        _stop_processes(state)
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
