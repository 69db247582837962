"""The state a background broker leaves behind, and how other commands find it.

``iterrefine broker up`` records the Tansu (and SeaweedFS) processes it started in
``DATA_DIR/broker.json``; ``run``, ``worker``, ``status`` and ``down`` find the broker
through that file. A state file whose processes are gone counts as no broker.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import msgspec
import structlog

from iterrefine.broker.embedded import EmbeddedBroker, broker_answers
from iterrefine.errors import BrokerError
from iterrefine.processes import pid_runs, stop_pid

log = structlog.get_logger()

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
    except (FileNotFoundError, NotADirectoryError):  # no broker state here (maybe no dir)
        return None
    except (OSError, msgspec.DecodeError) as exc:
        raise BrokerError(
            f"cannot read {path}: {exc}. If no broker is running, delete the file."
        ) from exc


def write_state(data_dir: Path, state: BrokerState) -> None:
    tmp = data_dir / f".{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(state)) + b"\n")
    os.replace(tmp, data_dir / STATE_FILE)


def is_live(state: BrokerState) -> bool:
    if not (pid_runs(state.pid, "tansu") and broker_answers(state.port)):
        return False
    return state.weed_pid is None or pid_runs(state.weed_pid, "weed")


def find_running_broker(data_dir: str | os.PathLike[str]) -> BrokerState | None:
    """The broker started by ``broker up`` in ``data_dir``, if it is alive and answering."""
    state = read_state(Path(data_dir).resolve())
    return state if state is not None and is_live(state) else None


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
    # Ours alone: it must not outlive this process, even when that is SIGKILLed.
    broker = EmbeddedBroker(port=port, data_dir=data_dir, durable=durable, die_with_parent=True)
    broker.start()
    return broker.bootstrap_servers, broker


@contextlib.contextmanager
def state_lock(data_dir: Path) -> Iterator[None]:
    """Serialize ``up``/``down`` on one data dir, so two ``up`` cannot start two brokers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "broker.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def stop_processes(state: BrokerState) -> None:
    # Tansu first: it must not lose its storage while it may still be writing.
    if pid_runs(state.pid, "tansu"):
        stop_pid(state.pid, timeout_s=10.0)
    if state.weed_pid is not None and pid_runs(state.weed_pid, "weed"):
        stop_pid(state.weed_pid, timeout_s=15.0)
