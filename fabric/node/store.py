"""One node's shard of the result cache: a memory LRU in front of a sqlite file.

Lives in the node process and is driven from its loop only (one thread), on
``CACHE_GET`` / ``CACHE_PUT`` / ``CACHE_CLEAR`` messages.  Entries survive a
node restart; several node processes on one machine may share a file
(rollback journal, busy timeout).  Both layers evict the least recently used entry
first: the memory layer by its own bounds, the file by ``max_entries`` and
``max_bytes``.  Recency on disk is a counter written in one batch, only when
an eviction needs it (and at close); serving hits never writes to disk.  Past
``MAX_TOUCHED`` remembered hits the oldest recency is forgotten, so under
heavy churn the disk order is approximately, not exactly, least recently used.

A file that is not a readable store (corrupt, or of another schema) is moved
aside with a warning, at start or whenever an operation finds it corrupt, and
replaced by an empty one while the node keeps running.  The integrity check
reads the whole file (~0.25 s per GiB when cached), so it runs only when a
process that had the file open on this host died without closing it; each
opener registers itself in the file for that.  Every value carries a
checksum, verified when it is read from the file: sqlite has no checksums of
its own, so a flipped byte on disk would otherwise come back as a hit.  Entry
and byte counts are read once at start from a covering index and kept up to
date by this process as writes commit, so statistics and eviction never scan
the table and never count what failed to reach the file.

A directory that cannot be written (read-only, full, no permission) turns
the store off rather than stopping the node: it answers misses, stores
nothing and says so in :meth:`ResultStore.stats` (the heartbeat then gives
the node no weight on the cache ring).  Every sqlite error becomes a
:class:`~fabric.errors.StoreError`, which the node answers as a miss.

The journal is a rollback journal, not WAL: WAL's index is a shared memory
map of the ``-shm`` file, and a write into it that the file system refuses
(``chattr +i`` on the shard mid-run was measured) is a SIGBUS that kills the
process instead of an error; ``mmap_size`` is pinned to 0 for the same reason.
Commits do not wait for fsync (``synchronous=OFF``): with a rollback journal
that wait doubled the time to write a batch, and lookups queue behind it.  A
process crash loses nothing; an OS crash or power loss may leave a damaged
file, which the integrity check at the next start (its opener died) or the
first operation to meet it moves aside, and a damaged value fails its checksum.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import socket
import sqlite3
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from ..errors import StoreError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # 1 lacks the openers and the recency index, 1-2 the checksums: added on open
MAX_TOUCHED = 20_000  # recent hits whose recency is remembered until written
SQL_CHUNK = 500  # parameters per IN (...) query
_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key BLOB PRIMARY KEY, fn BLOB NOT NULL, value BLOB NOT NULL, size INTEGER NOT NULL, last_used INTEGER NOT NULL,
    checksum INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS results_fn ON results (fn);
CREATE INDEX IF NOT EXISTS results_recency ON results (last_used, size);
DROP INDEX IF EXISTS results_last_used;
CREATE TABLE IF NOT EXISTS openers (host TEXT NOT NULL, pid INTEGER NOT NULL, PRIMARY KEY (host, pid));
"""
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_DISK_CODES = frozenset(
    {sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM}
)
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM})


class _Unreadable(sqlite3.DatabaseError):
    """The file is a database, but not a store this version reads (schema, integrity)."""


def _is_corrupt(exc: BaseException) -> bool:
    return isinstance(exc, _Unreadable) or (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _CORRUPT_CODES


def _is_broken_disk(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in _DISK_ERRNOS
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _DISK_CODES


def checksum(value: bytes) -> int:
    """What a stored value must still sum to when read back: CRC-32, which catches
    any burst of flipped bits up to 32 long (~0.25 us for 100 bytes, a quarter of
    BLAKE2b's; it guards against a damaged disk, not an attacker: see the clients' seal)."""
    return zlib.crc32(value)


@dataclass(frozen=True)
class StoreStats:
    """Counts of what is stored (pending writes included); ``enabled`` is False when the store turned itself off."""

    entries: int
    bytes: int
    hits: int
    misses: int
    evictions: int
    enabled: bool = True


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
        self.off: str | None = None  # why the store turned itself off (the disk cannot be written)
        self._inode = 0  # of the file opened, to tell whether another process already moved it aside
        self._db: sqlite3.Connection | None = None
        if self.path is not None:
            self._db = self._open(self.path)

    # -- opening, and what a failure does -------------------------------------------------

    def _open(self, path: Path) -> sqlite3.Connection | None:
        """Connect, moving a corrupt file aside; None (the store off) when the disk refuses."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                return self._connect(path)
            except sqlite3.DatabaseError as exc:
                if not _is_corrupt(exc):
                    raise
                self._move_aside(path, exc)
                return self._connect(path)
        except (OSError, sqlite3.Error) as exc:
            self._turn_off(exc)
            return None

    def _connect(self, path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "results" in tables and version not in READABLE_VERSIONS:
                raise _Unreadable(f"schema version {version}, expected {SCHEMA_VERSION}")
            db.execute("PRAGMA mmap_size=0")
            db.execute("PRAGMA journal_mode=DELETE")
            db.execute("PRAGMA synchronous=OFF")  # see the module docstring
            db.executescript(_SCHEMA)
            if "checksum" not in {row[1] for row in db.execute("PRAGMA table_info(results)")}:
                db.create_function("fabric_checksum", 1, checksum, deterministic=True)
                db.executescript("""
                    ALTER TABLE results ADD COLUMN checksum INTEGER NOT NULL DEFAULT 0;
                    UPDATE results SET checksum = fabric_checksum(value);
                """)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.checked = self._register(db) or "openers" not in tables
            if self.checked and db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise _Unreadable("integrity check failed")
            self._clock, self._entries, self._bytes = db.execute(  # a scan of the covering recency index
                "SELECT coalesce(max(last_used), 0), count(*), coalesce(sum(size), 0) FROM results"
            ).fetchone()
            self._inode = os.stat(path).st_ino
        except (OSError, sqlite3.Error):
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

    @staticmethod
    def _move_aside(path: Path, why: BaseException) -> None:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning("result store %s is unreadable (%s); moved aside to %s, starting empty", path, why, aside)
        os.replace(path, aside)
        for suffix in ("-journal", "-wal", "-shm"):  # a hot journal would be played into the new file
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    def _failed(self, exc: sqlite3.Error) -> StoreError:
        """The error to raise for a failed operation, after acting on its cause: a
        corrupt file is rebuilt empty, a disk that refuses writes turns the store off."""
        if _is_corrupt(exc):
            self._rebuild(exc)
        elif _is_broken_disk(exc):
            self._turn_off(exc)
        return StoreError(f"result store {self.path}: {exc}")

    def _rebuild(self, why: sqlite3.Error) -> None:
        """Move the corrupt file aside and start an empty one; writes not yet on disk are kept."""
        path = self._close()
        try:
            if path.exists() and os.stat(path).st_ino == self._inode:  # else another opener moved it already
                self._move_aside(path, why)
            self._db = self._connect(path)
        except (OSError, sqlite3.Error) as exc:
            self._turn_off(exc)
            return
        self._memory.clear()
        self._memory_size = 0
        self._touched.clear()

    def _turn_off(self, why: BaseException) -> None:
        """Stop caching on this node, with one warning naming the directory and the cause."""
        if self.path is None:
            return
        if self.off is None:
            log.warning("result cache off: its directory %s cannot be used (%s); this node answers every lookup "
                        "as a miss and stores nothing until it restarts with a writable directory",
                        self.path.parent, why)
        self.off = str(why)
        if self._db is not None:
            self._close()
        self._memory.clear()
        self._pending.clear()
        self._touched.clear()
        self._memory_size = self._pending_bytes = self._entries = self._bytes = 0

    def _close(self) -> Path:
        """Close the connection, whatever state it is in; the file's path."""
        with contextlib.suppress(sqlite3.Error):
            self._connection().close()
        self._db = None
        return self.path  # type: ignore[return-value]  # only stores with a file have a connection

    # -- reads --------------------------------------------------------------------------

    def get_many(self, keys: list[bytes]) -> dict[int, bytes]:
        """Values by index into ``keys``, for the keys present."""
        found: dict[int, bytes] = {}
        if self.off is not None:
            self.misses += len(keys)
            return found
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
            damaged: list[tuple[bytes, int]] = []
            for key, fn, value, size, stored_sum in self._select(list(wanted)):
                if checksum(value) != stored_sum:
                    damaged.append((key, size))
                    continue
                for index in wanted[key]:
                    found[index] = value
                self._remember(key, fn, value)
                self._touched.add(key)
            if damaged:
                log.warning("result store %s: %d entries failed their checksum (damaged on disk); dropped",
                            self.path, len(damaged))
                self._delete(damaged)
        self.hits += len(found)
        self.misses += len(keys) - len(found)
        if len(self._touched) > MAX_TOUCHED:
            self._touched.clear()
        return found

    def _select(self, keys: list[bytes]) -> list[tuple[bytes, bytes, bytes, int, int]]:
        return self._in_chunks("SELECT key, fn, value, size, checksum FROM results WHERE key IN ({})", keys)

    def _sizes(self, keys: list[bytes]) -> list[tuple[bytes, int]]:
        return self._in_chunks("SELECT key, size FROM results WHERE key IN ({})", keys)

    def _in_chunks(self, query: str, keys: list[bytes]) -> list[Any]:
        rows = []
        for start in range(0, len(keys), SQL_CHUNK):
            chunk = keys[start : start + SQL_CHUNK]
            rows += self._sql(query.format(",".join("?" * len(chunk))), chunk)
        return rows

    # -- writes -------------------------------------------------------------------------

    def put_many(self, fn_digest: bytes, entries: list[tuple[bytes, bytes]]) -> int:
        """Insert or replace; how many were taken (none while the store is off).
        The entries are served at once; the disk write waits for :meth:`flush`
        (the node calls it between messages, so hits never queue behind writes)."""
        if self.off is not None:
            return 0
        for key, value in entries:
            self._remember(key, fn_digest, value)
            if self._db is not None:
                old = self._pending.get(key)
                self._pending_bytes += len(value) - (len(old[1]) if old else 0)
                self._pending[key] = (fn_digest, value)
        if self._db is None:
            self._evict_memory_only()
        return len(entries)

    def flush(self, max_entries: int | None = None) -> None:
        """Write pending entries to disk (at most ``max_entries``), then evict.
        The counts change only once the write has committed; a failed write
        keeps the entries pending (or drops them, if the store turned off)."""
        if not self._pending or self._db is None:
            return
        keys = list(itertools.islice(self._pending, max_entries))
        replaced = dict(self._sizes(keys))
        rows = []
        for clock, key in enumerate(keys, self._clock + 1):
            fn_digest, value = self._pending[key]
            rows.append((key, fn_digest, value, len(value), clock, checksum(value)))
        self._transaction(
            lambda db: db.executemany(
                "INSERT OR REPLACE INTO results (key, fn, value, size, last_used, checksum) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        )
        self._clock += len(rows)
        for key in keys:
            value = self._pending.pop(key)[1]
            self._pending_bytes -= len(value)
            self._entries += key not in replaced
            self._bytes += len(value) - replaced.pop(key, 0)
        self._evict_disk()

    def clear(self, fn_digest: bytes | None = None) -> int:
        """Remove one function's entries, or all; return how many."""
        self.flush()
        if self.off is not None:
            return 0
        doomed = [k for k, (fn, _) in self._memory.items() if fn_digest is None or fn == fn_digest]
        for key in doomed:
            self._forget(key)
        if self._db is None:
            self._entries, self._bytes = len(self._memory), self._memory_size
            return len(doomed)
        where, params = ("", ()) if fn_digest is None else (" WHERE fn = ?", (fn_digest,))
        [(count, size)] = self._sql(f"SELECT count(*), coalesce(sum(size), 0) FROM results{where}", params)
        self._transaction(lambda db: db.execute(f"DELETE FROM results{where}", params))
        self._entries -= count
        self._bytes -= size
        return int(count)

    def _delete(self, doomed: list[tuple[bytes, int]]) -> None:
        """Remove entries (key, size) from the file and from memory."""
        self._transaction(lambda db: db.executemany("DELETE FROM results WHERE key = ?", [(k,) for k, _ in doomed]))
        for key, size in doomed:
            self._forget(key)
            self._entries -= 1
            self._bytes -= size

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
        doomed = self._sql("SELECT key, size FROM results ORDER BY last_used LIMIT ?", (excess,))
        self._delete(doomed)
        self.evictions += len(doomed)

    def _entries_to_free(self, bytes_over: int) -> int:
        """How many of the least recently used entries add up to ``bytes_over``."""
        [(count,)] = self._sql(
            "SELECT count(*) FROM (SELECT sum(size) OVER (ORDER BY last_used ROWS UNBOUNDED PRECEDING) - size AS before"
            " FROM results) WHERE before < ?",
            (bytes_over,),
        )
        return int(count)

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

    def _sql(self, query: str, params: Sequence[object] = ()) -> list[Any]:
        """One statement's rows; fetching is inside, since a corrupt page fails there, not in execute."""
        try:
            return self._connection().execute(query, params).fetchall()
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc

    def _transaction(self, work: Callable[[sqlite3.Connection], object]) -> None:
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE")
            work(db)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:  # sqlite has already rolled back after some errors (disk full, I/O)
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise self._failed(exc) from exc

    def stats(self) -> StoreStats:
        """Counts include writes still pending (a pending replacement counts twice until flushed)."""
        pending = len(self._pending), self._pending_bytes
        return StoreStats(self._entries + pending[0], self._bytes + pending[1], self.hits, self.misses, self.evictions,
                          self.off is None)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def close(self) -> None:
        """Write what is pending and unregister; a failure here was logged where it happened."""
        if self._db is None:
            return
        try:
            self.flush()
            self._flush_touches()
            self._sql("DELETE FROM openers WHERE host = ? AND pid = ?", (socket.gethostname(), os.getpid()))
        except StoreError as exc:
            log.error("result store %s: closing: %s", self.path, exc)
        if self._db is not None:
            self._close()
