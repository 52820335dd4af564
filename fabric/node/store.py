"""One node's shard of the result cache: a memory LRU in front of a sqlite file.

Lives in the node process and is driven from its loop only (one thread), on
``CACHE_GET`` / ``CACHE_PUT`` / ``CACHE_CLEAR`` messages.  Entries survive a
node restart; several node processes on one machine may share a file (WAL
journal, busy timeout).  Both layers evict the least recently used entry
first: the memory layer by its own bounds, the file by ``max_entries`` and
``max_bytes``.  Recency on disk is a counter written in one batch, only when
an eviction needs it (and at close); serving hits never writes to disk.  Past
``MAX_TOUCHED`` remembered hits the oldest recency is forgotten, so under
heavy churn the disk order is approximately, not exactly, least recently used.

A file that is not a readable store (corrupt, or of another schema) is moved
aside with a warning at start and replaced by an empty one.  The integrity
check reads the whole file (~0.25 s per GiB when cached), so it runs only
when a process that had the file open on this host died without closing it;
each opener registers itself in the file for that.  Entry and byte counts are
read once at start from a covering index and kept up to date by this process,
so statistics and eviction never scan the table.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from ..errors import StoreError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1 lacks the openers and the covering recency index: added on open
MAX_TOUCHED = 20_000  # recent hits whose recency is remembered until written
SQL_CHUNK = 500  # parameters per IN (...) query
_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key BLOB PRIMARY KEY, fn BLOB NOT NULL, value BLOB NOT NULL, size INTEGER NOT NULL, last_used INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS results_fn ON results (fn);
CREATE INDEX IF NOT EXISTS results_recency ON results (last_used, size);
DROP INDEX IF EXISTS results_last_used;
CREATE TABLE IF NOT EXISTS openers (host TEXT NOT NULL, pid INTEGER NOT NULL, PRIMARY KEY (host, pid));
"""


@dataclass(frozen=True)
class StoreStats:
    entries: int
    bytes: int
    hits: int
    misses: int
    evictions: int


class ResultStore:
    """Bounded key -> bytes store with LRU eviction; ``path=None`` keeps memory only."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        *,
        max_entries: int = 1_000_000,
        max_bytes: int = 1 << 30,
        memory_entries: int = 100_000,
        memory_bytes: int = 64 << 20,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.memory_entries = memory_entries
        self.memory_bytes = memory_bytes
        self._memory: OrderedDict[bytes, tuple[bytes, bytes]] = OrderedDict()  # key -> (fn, value)
        self._memory_size = 0
        self._touched: set[bytes] = set()
        self._pending: dict[bytes, tuple[bytes, bytes]] = {}  # put, not yet on disk
        self._pending_bytes = 0
        self._clock = 0
        self._entries = self._bytes = 0  # of the file (or of memory, without one)
        self.hits = self.misses = self.evictions = 0
        self.checked = False  # whether opening ran the integrity check
        self._db = self._open(self.path) if self.path is not None else None

    # -- opening ------------------------------------------------------------------------

    def _open(self, path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect(path)
        except sqlite3.DatabaseError as exc:
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            log.warning("result store %s is unreadable (%s); moved aside to %s, starting empty", path, exc, aside)
            os.replace(path, aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            return self._connect(path)

    def _connect(self, path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "results" in tables and version not in READABLE_VERSIONS:
                raise sqlite3.DatabaseError(f"schema version {version}, expected {SCHEMA_VERSION}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.checked = self._register(db) or "openers" not in tables
            if self.checked and db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
            self._clock, self._entries, self._bytes = db.execute(  # a scan of the covering recency index
                "SELECT coalesce(max(last_used), 0), count(*), coalesce(sum(size), 0) FROM results"
            ).fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    @staticmethod
    def _register(db: sqlite3.Connection) -> bool:
        """Record this process as an opener; whether one on this host died with the file open."""
        host = socket.gethostname()
        db.execute("BEGIN IMMEDIATE")
        pids = [pid for (pid,) in db.execute("SELECT pid FROM openers WHERE host = ?", (host,))]
        dead = [(host, pid) for pid in pids if not psutil.pid_exists(pid)]
        db.executemany("DELETE FROM openers WHERE host = ? AND pid = ?", dead)
        db.execute("INSERT OR REPLACE INTO openers (host, pid) VALUES (?, ?)", (host, os.getpid()))
        db.execute("COMMIT")
        return bool(dead)

    # -- reads --------------------------------------------------------------------------

    def get_many(self, keys: list[bytes]) -> dict[int, bytes]:
        """Values by index into ``keys``, for the keys present."""
        found: dict[int, bytes] = {}
        wanted: dict[bytes, list[int]] = {}
        for index, key in enumerate(keys):
            entry = self._memory.get(key)
            if entry is not None:
                self._memory.move_to_end(key)
            else:
                entry = self._pending.get(key)  # put, pushed out of memory, not yet on disk
            if entry is not None:
                found[index] = entry[1]
                self._touched.add(key)
            else:
                wanted.setdefault(key, []).append(index)
        if wanted and self._db is not None:
            for key, fn, value in self._select(list(wanted)):
                for index in wanted[key]:
                    found[index] = value
                self._remember(key, fn, value)
                self._touched.add(key)
        self.hits += len(found)
        self.misses += len(keys) - len(found)
        if len(self._touched) > MAX_TOUCHED:
            self._touched.clear()
        return found

    def _select(self, keys: list[bytes]) -> list[tuple[bytes, bytes, bytes]]:
        return self._in_chunks("SELECT key, fn, value FROM results WHERE key IN ({})", keys)

    def _sizes(self, keys: list[bytes]) -> list[tuple[bytes, int]]:
        return self._in_chunks("SELECT key, size FROM results WHERE key IN ({})", keys)

    def _in_chunks(self, query: str, keys: list[bytes]) -> list[Any]:
        rows = []
        for start in range(0, len(keys), SQL_CHUNK):
            chunk = keys[start : start + SQL_CHUNK]
            rows += self._sql(query.format(",".join("?" * len(chunk))), chunk).fetchall()
        return rows

    # -- writes -------------------------------------------------------------------------

    def put_many(self, fn_digest: bytes, entries: list[tuple[bytes, bytes]]) -> None:
        """Insert or replace.  The entries are served at once; the disk write
        waits for :meth:`flush` (the node calls it between messages, so hits
        never queue behind writes)."""
        for key, value in entries:
            self._remember(key, fn_digest, value)
            if self._db is not None:
                old = self._pending.get(key)
                self._pending_bytes += len(value) - (len(old[1]) if old else 0)
                self._pending[key] = (fn_digest, value)
        if self._db is None:
            self._evict_memory_only()

    def flush(self, max_entries: int | None = None) -> None:
        """Write pending entries to disk (at most ``max_entries``), then evict."""
        if not self._pending:
            return
        keys = list(itertools.islice(self._pending, max_entries))
        replaced = dict(self._sizes(keys))
        rows = []
        for key in keys:
            fn_digest, value = self._pending.pop(key)
            self._pending_bytes -= len(value)
            self._clock += 1
            rows.append((key, fn_digest, value, len(value), self._clock))
            self._entries += key not in replaced
            self._bytes += len(value) - replaced.pop(key, 0)
        self._transaction(
            lambda db: db.executemany(
                "INSERT OR REPLACE INTO results (key, fn, value, size, last_used) VALUES (?, ?, ?, ?, ?)", rows
            )
        )
        self._evict_disk()

    def clear(self, fn_digest: bytes | None = None) -> int:
        """Remove one function's entries, or all; return how many."""
        self.flush()
        doomed = [k for k, (fn, _) in self._memory.items() if fn_digest is None or fn == fn_digest]
        for key in doomed:
            self._forget(key)
        if self._db is None:
            self._entries, self._bytes = len(self._memory), self._memory_size
            return len(doomed)
        where, params = ("", ()) if fn_digest is None else (" WHERE fn = ?", (fn_digest,))
        count, size = self._sql(f"SELECT count(*), coalesce(sum(size), 0) FROM results{where}", params).fetchone()
        self._sql(f"DELETE FROM results{where}", params)
        self._entries -= count
        self._bytes -= size
        return count

    def _remember(self, key: bytes, fn: bytes, value: bytes) -> None:
        if len(value) > self.memory_bytes:
            return
        self._forget(key)
        self._memory[key] = (fn, value)
        self._memory_size += len(value)
        self._shrink_memory(self.memory_entries, self.memory_bytes)

    def _forget(self, key: bytes) -> None:
        entry = self._memory.pop(key, None)
        if entry is not None:
            self._memory_size -= len(entry[1])

    def _shrink_memory(self, max_entries: int, max_bytes: int) -> int:
        """Drop the least recently used entries until memory is within the
        bounds; return how many (evictions, when memory is the whole store)."""
        dropped = 0
        while len(self._memory) > max_entries or self._memory_size > max_bytes:
            _, (_, old) = self._memory.popitem(last=False)
            self._memory_size -= len(old)
            dropped += 1
        return dropped

    def _evict_memory_only(self) -> None:
        self.evictions += self._shrink_memory(self.max_entries, self.max_bytes)
        self._entries, self._bytes = len(self._memory), self._memory_size

    def _evict_disk(self) -> None:
        excess = max(0, self._entries - self.max_entries)
        if self._bytes > self.max_bytes:
            excess = max(excess, self._entries_to_free(self._bytes - self.max_bytes))
        if not excess:
            return
        self._flush_touches()
        doomed = self._sql("SELECT key, size FROM results ORDER BY last_used LIMIT ?", (excess,)).fetchall()
        self._transaction(lambda db: db.executemany("DELETE FROM results WHERE key = ?", [(k,) for k, _ in doomed]))
        for key, size in doomed:
            self._forget(key)
            self._entries -= 1
            self._bytes -= size
        self.evictions += len(doomed)

    def _entries_to_free(self, bytes_over: int) -> int:
        """How many of the least recently used entries add up to ``bytes_over``."""
        freed = count = 0
        for (size,) in self._sql("SELECT size FROM results ORDER BY last_used"):
            if freed >= bytes_over:
                break
            freed += size
            count += 1
        return count

    def _flush_touches(self) -> None:
        """Record recent hits as recent uses on disk, in one batch."""
        if self._db is None or not self._touched:
            return
        rows = []
        for key in self._touched:
            self._clock += 1
            rows.append((self._clock, key))
        self._touched.clear()
        self._transaction(lambda db: db.executemany("UPDATE results SET last_used = ? WHERE key = ?", rows))

    # -- sqlite ---------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"result store {self.path} is closed")
        return self._db

    def _sql(self, query: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        try:
            return self._connection().execute(query, params)
        except sqlite3.Error as exc:
            raise StoreError(f"result store {self.path}: {exc}") from exc

    def _transaction(self, work: Callable[[sqlite3.Connection], object]) -> None:
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"result store {self.path}: {exc}") from exc

    def stats(self) -> StoreStats:
        """Counts include writes still pending (a pending replacement counts twice until flushed)."""
        pending = len(self._pending), self._pending_bytes
        return StoreStats(self._entries + pending[0], self._bytes + pending[1], self.hits, self.misses, self.evictions)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def close(self) -> None:
        if self._db is not None:
            self.flush()
            self._flush_touches()
            self._sql("DELETE FROM openers WHERE host = ? AND pid = ?", (socket.gethostname(), os.getpid()))
            self._db.close()
            self._db = None
