"""The seal of a cached answer: an HMAC over its key and fields, under a secret of the file.

A cache file holds answers that are copied into curated data unread, so an entry is
used only when its seal matches. Without the secret an entry cannot be forged: a row
planted or edited with ``sqlite3``, or a page damaged on disk, fails the check. The
secret is 32 random bytes in ``<cache file>.key`` (mode 0600), made by the first
process that opens the cache; copying a cache to another host means copying both.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

import msgspec
import structlog

log = structlog.get_logger("iterrefine.llm")

SECRET_BYTES = 32
_encode = msgspec.json.Encoder().encode


def secret_path(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.name + ".key")


def load_secret(cache_path: Path) -> bytes:
    """The cache's secret, made now (atomically, 0600) if this is the cache's first use.

    A key file of the wrong size is moved aside and replaced: every entry sealed under
    the lost secret then reads as rejected, and is asked again.
    """
    path = secret_path(cache_path)
    for _ in range(3):
        with contextlib.suppress(FileNotFoundError):
            secret = path.read_bytes()
            if len(secret) == SECRET_BYTES:
                return secret
            aside = path.with_name(f"{path.name}.bad-{int(time.time())}")
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, aside)
            log.error("llm_cache_key_replaced", path=str(path), moved_to=str(aside),
                      why=f"{len(secret)} bytes instead of {SECRET_BYTES}")
        _create(path)
    raise OSError(f"cannot create the cache's key file {path}")


def _create(path: Path) -> None:
    """Write a new secret under a temporary name, then link it in: a reader never sees
    a half-written key, and of two processes racing only one secret wins."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(handle, secrets.token_bytes(SECRET_BYTES))
        os.fsync(handle)
    finally:
        os.close(handle)
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process won the race: its secret is the one
    finally:
        os.unlink(temporary)


def seal(secret: bytes, key: str, fields: tuple[object, ...]) -> bytes:
    """The HMAC-BLAKE2b of an entry: its key and every field that is handed back."""
    message = _encode([key, *fields])
    return hmac.new(secret, message, hashlib.blake2b).digest()[:32]


def matches(secret: bytes, key: str, fields: tuple[object, ...], stored: object) -> bool:
    return isinstance(stored, bytes) and hmac.compare_digest(seal(secret, key, fields), stored)
