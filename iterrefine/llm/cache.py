"""A content-addressed cache of LLM answers: never pay twice for the same question.

The key is a hash of what decides an answer: the endpoint's identity, the model, the
messages, temperature, ``max_tokens`` and the task's JSON schema
(:func:`request_key`). The identity is the endpoint's URL (``http://host:port/v1``, no
credentials), or the role's ``endpoint_identity`` when set: ``run --llm sim`` names its
simulator by the knobs that shape its answers, so a rerun on a new port still hits and
a rerun with other knobs does not. The API key is left out (a rotated key asks the same
server), and so is the structured-output dialect (an answer read in one dialect answers
the question in any: only readable answers are stored), which lets a fully cached rerun
finish without asking the endpoint anything, even while it is down. One thing is taken
out of the messages first: the random nonce of the data fence
(:mod:`iterrefine.tasks.prompts`), drawn afresh per request so that item text cannot close
the fence. It says nothing about the question, and keeping it would make every key
unique (:func:`without_fence_nonce`).

Only *readable* answers are stored: the client hands back the key with each answer,
and :func:`iterrefine.tasks.ask.ask` calls :meth:`ResponseCache.put` (through the
client's ``remember``) only after the task's parser accepted the text. An answer the
parser rejected is re-asked with a different prompt (a different key) and never
becomes a cached "good" answer; a cached answer a newer parser rejects is deleted.

Every entry is **sealed** (:mod:`iterrefine.llm._seal`): an HMAC of its key and fields
under a secret kept beside the file. An entry whose seal does not match (edited,
planted, or damaged on disk) is never used: it is a miss, counted (``cache_rejected``,
``iterrefine_llm_cache_total{result="rejected"}``), logged as an error and deleted. A
file SQLite cannot read is moved aside (``<file>.corrupt-<time>``, logged as an error)
and a new one is started, so one damaged file does not leave every later run uncached.

Why SQLite (the standard library's ``sqlite3``) in WAL mode: it is the most widely
deployed embedded store there is, needs no extra dependency, and WAL lets several
processes on one host (``run --workers N``, ``iterrefine worker`` replicas) read
while one writes, with ``busy_timeout`` queueing the writers. A lookup is one indexed
read of a few kB (tens of µs), cheap next to a model call. ``diskcache`` is SQLite
underneath as well; ``lmdb`` would add a C dependency and a fixed map size for no
gain at this volume (one row per model answer).

Several hosts do not share one SQLite file (file locking over NFS is unreliable):
see docs/cache.md for how to share answers between hosts.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec
import structlog

from iterrefine.llm import _seal
from iterrefine.observe.metrics import Metrics

log = structlog.get_logger("iterrefine.llm")

#: ``on``: read and write; ``refresh``: ask again and overwrite; ``off``: no cache.
CacheMode = Literal["on", "off", "refresh"]

FILE_NAME = "llm-cache.sqlite3"
#: How often a process adds its hits and misses to the file's totals (and at close).
FLUSH_INTERVAL_S = 5.0

# ``answers`` held unsealed rows keyed without the endpoint (before 0.x): none of its
# keys can match any more, so it is dropped rather than migrated.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sealed_answers (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    finish_reason TEXT,
    simulated INTEGER NOT NULL,
    created_at REAL NOT NULL,
    seal BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
DROP TABLE IF EXISTS answers;
"""
_COUNTERS = ("hits", "misses", "tokens_saved", "rejected")


class CachedAnswer(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    #: The answer came from iterrefine's simulator (output made from it is marked so).
    simulated: bool = False

    def fields(self) -> tuple[object, ...]:
        """What the seal covers: everything handed back."""
        return (self.model, self.text, self.prompt_tokens, self.completion_tokens,
                self.finish_reason, self.simulated)


class CacheStats(msgspec.Struct, frozen=True, kw_only=True):
    """What ``iterrefine cache stats`` prints."""

    path: str
    entries: int
    bytes: int
    #: Lifetime totals over every process that used this file.
    hits: int
    misses: int
    tokens_saved: int
    #: Entries refused because their seal did not match (tampered or damaged).
    rejected: int = 0
    #: Why SQLite cannot read the file (it is moved aside at the next run), else None.
    damaged: str | None = None


#: The opening fence line of :func:`iterrefine.tasks.prompts.data_block`. Item text is one JSON
#: line inside the fence, so it can never start a line: the first match is the real one.
_FENCE = re.compile(r"^<<<DATA ([0-9a-f]{8})>>>$", re.MULTILINE)


def without_fence_nonce(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """``messages`` with the data fence's per-request nonce replaced by a fixed word."""
    out = []
    for message in messages:
        content = message.get("content", "")
        match = _FENCE.search(content)
        if match is not None:
            nonce = match.group(1)
            content = content.replace(f"<<<DATA {nonce}>>>", "<<<DATA nonce>>>").replace(
                f"<<<END DATA {nonce}>>>", "<<<END DATA nonce>>>")
            message = {**message, "content": content}
        out.append(message)
    return out


def cache_key(body: bytes) -> str:
    """The key of one request: a hash of its encoded body (fence nonce taken out)."""
    return hashlib.blake2b(body, digest_size=20).hexdigest()


def endpoint_identity(base_url: str) -> str:
    """An endpoint as the cache tells it apart: scheme, host, port and path of its URL,
    without credentials or query, case and trailing slash normalised."""
    parts = urlsplit(base_url.strip())
    host = (parts.hostname or "").lower()
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))


_key_body = msgspec.json.Encoder().encode


def request_key(
    *, endpoint: str, model: str, messages: list[dict[str, str]], temperature: float,
    max_tokens: int, json_schema: dict[str, Any] | None, schema_name: str,
    knobs: dict[str, Any] | None = None,
) -> str:
    """The key of a chat request: everything that decides its answer (module docstring).

    ``knobs``: the other sampling settings sent (stop sequences, frequency penalty); absent
    when none are, so keys of plain requests stay what they were.
    """
    return cache_key(_key_body({
        "endpoint": endpoint, "model": model, "messages": without_fence_nonce(messages),
        "temperature": temperature, "max_tokens": max_tokens,
        "schema": None if json_schema is None else [schema_name, json_schema],
        **({"knobs": knobs} if knobs else {}),
    }))


#: Body fields besides the key's own that change what a model answers.
_SAMPLING_KNOBS = ("stop", "frequency_penalty")


def sampling_knobs(body: dict[str, Any]) -> dict[str, Any]:
    """The fields of a chat body named in ``_SAMPLING_KNOBS`` (for :func:`request_key`)."""
    return {name: body[name] for name in _SAMPLING_KNOBS if name in body}


def default_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / FILE_NAME


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: autocommit, each statement is its own short transaction.
    db = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: durable across a process crash (the case resume is for);
        # a power cut may lose the last answers, which are then simply asked again.
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        problem = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if problem != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {problem}")
    except BaseException:
        db.close()
        raise
    return db


def quarantine(path: Path, why: str) -> Path:
    """Move a damaged cache file (and its WAL and shared-memory files) aside."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    log.error("llm_cache_quarantined", path=str(path), moved_to=str(aside), error=why,
              effect="a new, empty cache is used; the damaged file is kept for inspection")
    return aside


def _open(path: Path) -> sqlite3.Connection:
    """The cache's connection; a file SQLite cannot read is quarantined, a new one made.

    The file is moved aside only if it is still the one found damaged: another process
    may have replaced it meanwhile, and its new file is kept.
    """
    try:
        inode = path.stat().st_ino
    except FileNotFoundError:
        inode = None
    try:
        return _connect(path)
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            raise
        with contextlib.suppress(FileNotFoundError):
            if inode is not None and path.stat().st_ino == inode:
                quarantine(path, str(exc))
        return _connect(path)


class ResponseCache:
    """One process's handle on the cache file; share it between that process's roles.

    Calls are synchronous: each is a single short SQLite statement (WAL, no fsync per
    commit), faster than handing it to a thread. A statement that fails on a file
    damaged while in use reads as a miss (logged), never as a failed call.
    """

    def __init__(self, path: str | Path, *, mode: CacheMode = "on") -> None:
        if mode == "off":
            raise ValueError("a ResponseCache in mode 'off' is no cache: pass None instead")
        self.path = Path(path)
        self.mode: CacheMode = mode
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._secret = _seal.load_secret(self.path)
        self._db = _open(self.path)
        self._pending = dict.fromkeys(_COUNTERS, 0)
        self._flushed_at = time.monotonic()
        #: Entries refused by this handle (their seal did not match, or unreadable).
        self.rejected = 0

    def get(self, key: str) -> CachedAnswer | None:
        """The stored answer for ``key`` (always ``None`` in refresh mode, and for an
        entry whose seal does not match: that one is counted, logged and deleted)."""
        if time.monotonic() - self._flushed_at > FLUSH_INTERVAL_S:
            # A long-running worker's hits show in `iterrefine status` while it runs.
            try:
                self.flush_counters()
            except sqlite3.Error as exc:  # kept pending: they go with the next flush
                log.warning("llm_cache_counters_not_flushed", error=str(exc))
                self._flushed_at = time.monotonic()
        if self.mode == "refresh":
            self._pending["misses"] += 1
            return None
        try:
            row = self._db.execute(
                "SELECT text, model, prompt_tokens, completion_tokens, finish_reason, "
                "simulated, seal FROM sealed_answers WHERE key = ?", (key,),
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            self._reject(key, f"unreadable: {exc}", delete=False)
            return None
        if row is None:
            self._pending["misses"] += 1
            return None
        # Columns of the wrong type (a planted row) change the sealed fields: no match.
        answer = CachedAnswer(text=row[0], model=row[1], prompt_tokens=row[2],
                              completion_tokens=row[3], finish_reason=row[4],
                              simulated=bool(row[5]))
        if not _seal.matches(self._secret, key, answer.fields(), row[6]):
            self._reject(key, "its seal does not match: the entry was changed or damaged")
            return None
        self._pending["hits"] += 1
        self._pending["tokens_saved"] += answer.prompt_tokens + answer.completion_tokens
        return answer

    def _reject(self, key: str, why: str, *, delete: bool = True) -> None:
        self.rejected += 1
        self._pending["rejected"] += 1
        self._pending["misses"] += 1
        log.error("llm_cache_entry_rejected", path=str(self.path), key=key, why=why,
                  effect="not used: the question is asked again")
        if delete:
            self.delete(key)

    def put(self, key: str, answer: CachedAnswer) -> None:
        """Store a readable answer (the caller's parser accepted it), sealed."""
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO sealed_answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, answer.model, answer.text, answer.prompt_tokens,
                 answer.completion_tokens, answer.finish_reason, int(answer.simulated),
                 time.time(), _seal.seal(self._secret, key, answer.fields())),
            )
        except sqlite3.DatabaseError as exc:  # the answer is still used, only not kept
            log.error("llm_cache_write_failed", path=str(self.path), error=str(exc))

    def delete(self, key: str) -> None:
        """Forget an answer that turned out unreadable (e.g. a stricter parser)."""
        try:
            self._db.execute("DELETE FROM sealed_answers WHERE key = ?", (key,))
        except sqlite3.DatabaseError as exc:
            log.error("llm_cache_write_failed", path=str(self.path), error=str(exc))

    def flush_counters(self) -> None:
        """Add this process's hits/misses to the file's lifetime totals."""
        pending = {k: v for k, v in self._pending.items() if v}
        if not pending:
            return
        self._db.executemany(
            "INSERT INTO counters VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            list(pending.items()),
        )
        self._pending = dict.fromkeys(self._pending, 0)
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        try:
            self.flush_counters()
        except sqlite3.Error as exc:  # best effort: losing counters must not fail a run
            log.warning("llm_cache_counters_lost", error=str(exc))
        self._db.close()


class RoleCache:
    """One role's view of the shared cache: its hits, misses and tokens saved, also as
    metrics (``iterrefine_llm_cache_total``, ``..._tokens_saved_total``)."""

    def __init__(self, cache: ResponseCache, role: str, metrics: Metrics | None) -> None:
        self._cache = cache
        self.hits = 0
        self.misses = 0
        self.tokens_saved = 0
        self.rejected = 0
        # Children looked up once: labels() costs a lock and a tuple per call.
        self._counters = None if metrics is None else (
            metrics.llm_cache_total.labels(role=role, result="hit"),
            metrics.llm_cache_total.labels(role=role, result="miss"),
            metrics.llm_cache_tokens_saved_total.labels(role=role),
            metrics.llm_cache_total.labels(role=role, result="rejected"),
        )

    def lookup(self, key: str) -> CachedAnswer | None:
        rejected_before = self._cache.rejected
        hit = self._cache.get(key)
        if hit is None:
            self.misses += 1
            rejected = self._cache.rejected > rejected_before
            self.rejected += rejected
            if self._counters is not None:
                self._counters[1].inc()
                if rejected:
                    self._counters[3].inc()
            return None
        saved = hit.prompt_tokens + hit.completion_tokens
        self.hits += 1
        self.tokens_saved += saved
        if self._counters is not None:
            self._counters[0].inc()
            self._counters[2].inc(saved)
        return hit

    def keep(self, key: str, answer: CachedAnswer) -> None:
        self._cache.put(key, answer)

    def forget(self, key: str) -> None:
        self._cache.delete(key)


def read_stats(path: str | Path) -> CacheStats | None:
    """Entries, size and lifetime counters of a cache file (None if there is none)."""
    path = Path(path)
    if not path.exists():
        return None
    size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.is_file())
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        entries = (db.execute("SELECT count(*) FROM sealed_answers").fetchone()[0]
                   if "sealed_answers" in tables else 0)
        counters = (dict(db.execute("SELECT name, value FROM counters").fetchall())
                    if "counters" in tables else {})
    except sqlite3.DatabaseError as exc:
        return CacheStats(path=str(path), entries=0, bytes=size, hits=0, misses=0,
                          tokens_saved=0, damaged=str(exc))
    finally:
        db.close()
    return CacheStats(path=str(path), entries=entries, bytes=size,
                      hits=counters.get("hits", 0), misses=counters.get("misses", 0),
                      tokens_saved=counters.get("tokens_saved", 0),
                      rejected=counters.get("rejected", 0))


def clear(path: str | Path) -> int:
    """Delete every stored answer and counter; the number of answers deleted."""
    path = Path(path)
    if not path.exists():
        return 0
    try:
        db = _connect(path)
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            raise
        quarantine(path, str(exc))  # unreadable: nothing in it can be counted
        return 0
    try:
        deleted: int = db.execute("DELETE FROM sealed_answers").rowcount
        db.execute("DELETE FROM counters")
        db.execute("VACUUM")
    finally:
        db.close()
    return deleted
