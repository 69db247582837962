"""A content-addressed cache of LLM answers: never pay twice for the same question.

The key is a hash of the request body the client sends (model, messages,
temperature, ``max_tokens``, response format and its JSON schema), so anything that
could change the answer changes the key; the endpoint URL and API key are left out
on purpose, so a restarted simulator on a new port or a rotated key still hits. One
thing is taken out of the messages first: the random nonce of the data fence
(:mod:`iterrefine.tasks.prompts`), drawn afresh per request so that item text cannot close
the fence. It says nothing about the question, and keeping it would make every key
unique (:func:`without_fence_nonce`).

Only *readable* answers are stored: the client hands back the key with each answer,
and :func:`iterrefine.tasks.ask.ask` calls :meth:`ResponseCache.put` (through the
client's ``remember``) only after the task's parser accepted the text. An answer the
parser rejected is re-asked with a different prompt (a different key) and never
becomes a cached "good" answer; a cached answer a newer parser rejects is deleted.

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

import hashlib
import re
import sqlite3
import time
from pathlib import Path
from typing import Literal

import msgspec
import structlog

from iterrefine.observe.metrics import Metrics

log = structlog.get_logger("iterrefine.llm")

#: ``on``: read and write; ``refresh``: ask again and overwrite; ``off``: no cache.
CacheMode = Literal["on", "off", "refresh"]

FILE_NAME = "llm-cache.sqlite3"
#: How often a process adds its hits and misses to the file's totals (and at close).
FLUSH_INTERVAL_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    finish_reason TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class CachedAnswer(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None


class CacheStats(msgspec.Struct, frozen=True, kw_only=True):
    """What ``iterrefine cache stats`` prints."""

    path: str
    entries: int
    bytes: int
    #: Lifetime totals over every process that used this file.
    hits: int
    misses: int
    tokens_saved: int


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


def default_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / FILE_NAME


class ResponseCache:
    """One process's handle on the cache file; share it between that process's roles.

    Calls are synchronous: each is a single short SQLite statement (WAL, no fsync per
    commit), faster than handing it to a thread.
    """

    def __init__(self, path: str | Path, *, mode: CacheMode = "on") -> None:
        if mode == "off":
            raise ValueError("a ResponseCache in mode 'off' is no cache: pass None instead")
        self.path = Path(path)
        self.mode: CacheMode = mode
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit, each statement is its own short transaction.
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: durable across a process crash (the case resume is for);
        # a power cut may lose the last answers, which are then simply asked again.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._pending = {"hits": 0, "misses": 0, "tokens_saved": 0}
        self._flushed_at = time.monotonic()

    def get(self, key: str) -> CachedAnswer | None:
        """The stored answer for ``key`` (always ``None`` in refresh mode)."""
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
        row = self._db.execute(
            "SELECT text, model, prompt_tokens, completion_tokens, finish_reason "
            "FROM answers WHERE key = ?", (key,),
        ).fetchone()
        if row is None:
            self._pending["misses"] += 1
            return None
        answer = CachedAnswer(text=row[0], model=row[1], prompt_tokens=row[2],
                              completion_tokens=row[3], finish_reason=row[4])
        self._pending["hits"] += 1
        self._pending["tokens_saved"] += answer.prompt_tokens + answer.completion_tokens
        return answer

    def put(self, key: str, answer: CachedAnswer) -> None:
        """Store a readable answer (the caller's parser accepted it)."""
        self._db.execute(
            "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key, answer.model, answer.text, answer.prompt_tokens, answer.completion_tokens,
             answer.finish_reason, time.time()),
        )

    def delete(self, key: str) -> None:
        """Forget an answer that turned out unreadable (e.g. a stricter parser)."""
        self._db.execute("DELETE FROM answers WHERE key = ?", (key,))

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
        # Children looked up once: labels() costs a lock and a tuple per call.
        self._counters = None if metrics is None else (
            metrics.llm_cache_total.labels(role=role, result="hit"),
            metrics.llm_cache_total.labels(role=role, result="miss"),
            metrics.llm_cache_tokens_saved_total.labels(role=role),
        )

    def lookup(self, key: str) -> CachedAnswer | None:
        hit = self._cache.get(key)
        if hit is None:
            self.misses += 1
            if self._counters is not None:
                self._counters[1].inc()
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
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    try:
        entries = db.execute("SELECT count(*) FROM answers").fetchone()[0]
        counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
    finally:
        db.close()
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
    return CacheStats(path=str(path), entries=entries, bytes=size,
                      hits=counters.get("hits", 0), misses=counters.get("misses", 0),
                      tokens_saved=counters.get("tokens_saved", 0))


def clear(path: str | Path) -> int:
    """Delete every stored answer and counter; the number of answers deleted."""
    path = Path(path)
    if not path.exists():
        return 0
    db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    try:
        db.executescript(_SCHEMA)
        deleted: int = db.execute("DELETE FROM answers").rowcount
        db.execute("DELETE FROM counters")
        db.execute("VACUUM")
    finally:
        db.close()
    return deleted
