"""A node's result-store shard: bounds, LRU order, persistence, corruption recovery, stats."""

import logging
import os
import signal
import sqlite3
import subprocess
import sys

from fabric.node.store import ResultStore

FN = b"f" * 16
OTHER = b"g" * 16


def key(i):
    return i.to_bytes(20, "big")


def fill(store, n, fn=FN, size=10):
    store.put_many(fn, [(key(i), bytes([i % 256]) * size) for i in range(n)])
    store.flush()


def test_round_trip_and_misses(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite")
    fill(store, 3)
    assert store.get_many([key(0), key(7), key(2)]) == {0: b"\0" * 10, 2: b"\2" * 10}
    stats = store.stats()
    assert (stats.entries, stats.bytes, stats.hits, stats.misses) == (3, 30, 2, 1)


def test_survives_reopening_and_is_shared_between_processes_files(tmp_path):
    path = tmp_path / "s.sqlite"
    first = ResultStore(path)
    fill(first, 5)
    second = ResultStore(path)  # a second node process on the same machine
    assert len(second.get_many([key(i) for i in range(5)])) == 5
    first.close()
    second.close()
    reopened = ResultStore(path, memory_entries=0)
    assert reopened.stats().entries == 5
    assert reopened.get_many([key(4)]) == {0: b"\4" * 10}


def test_least_recently_used_is_evicted_first_by_entries(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite", max_entries=3, memory_entries=0)
    fill(store, 3)
    store.get_many([key(0)])  # key 0 is now the most recently used
    store.put_many(FN, [(key(3), b"new")])
    store.flush()
    assert sorted(store.get_many([key(i) for i in range(4)])) == [0, 2, 3]
    assert store.stats().evictions == 1 and store.stats().entries == 3


def test_bytes_bound(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite", max_bytes=100, memory_entries=0)
    fill(store, 20, size=10)  # 200 bytes asked for, 100 allowed
    stats = store.stats()
    assert stats.bytes <= 100 and stats.entries == 10
    assert sorted(store.get_many([key(i) for i in range(20)])) == list(range(10, 20))


def test_memory_layer_is_bounded_and_disk_keeps_the_rest(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite", memory_entries=5)
    fill(store, 50)
    assert list(store._memory) == [key(i) for i in range(45, 50)]  # the five most recent
    assert len(store.get_many([key(i) for i in range(50)])) == 50


def test_memory_layer_keeps_the_most_recently_used_by_entries_and_bytes(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite", memory_entries=3, memory_bytes=25)
    fill(store, 3)  # 30 bytes: over the byte bound, the oldest goes
    assert list(store._memory) == [key(1), key(2)]
    store.get_many([key(1)])  # a hit makes key 1 the most recent
    store.put_many(FN, [(key(3), b"x" * 10)])
    assert list(store._memory) == [key(1), key(3)]  # key 2 was the least recently used
    assert store.stats().evictions == 0  # the file still holds every entry


def test_clear_one_function_or_all(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite")
    fill(store, 4, fn=FN)
    store.put_many(OTHER, [(key(100), b"x")])
    assert store.get_many([key(100)]) == {0: b"x"}  # served before it reaches the disk
    assert store.clear(FN) == 4
    assert store.get_many([key(0), key(100)]) == {1: b"x"}
    assert store.clear() == 1 and store.stats().entries == 0


def test_replacing_an_entry_counts_it_once(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite")
    store.put_many(FN, [(key(1), b"abc")])
    store.flush()
    store.put_many(FN, [(key(1), b"abcdef")])
    store.flush()
    assert (store.stats().entries, store.stats().bytes) == (1, 6)


def opened_afresh(path, caplog, warning):
    """Open the store at ``path``, which must warn with ``warning`` and start empty and working."""
    with caplog.at_level(logging.WARNING, logger="fabric.node.store"):
        store = ResultStore(path)
    assert warning in caplog.text
    assert store.stats().entries == 0
    fill(store, 2)
    assert len(store.get_many([key(0), key(1)])) == 2
    return store


def test_corrupt_file_is_moved_aside_and_replaced(tmp_path, caplog):
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    opened_afresh(path, caplog, "moved aside")
    assert list(tmp_path.glob("s.sqlite.corrupt-*"))


def test_a_store_of_another_schema_version_is_moved_aside(tmp_path, caplog):
    path = tmp_path / "s.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE results (key BLOB)")
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    opened_afresh(path, caplog, "schema version 99")


def test_integrity_is_checked_only_after_an_opener_died_with_the_file_open(tmp_path):
    path = tmp_path / "s.sqlite"
    first = ResultStore(path)
    assert first.checked  # a new file: nobody is known to have closed it
    fill(first, 3)
    second = ResultStore(path)  # the first is alive: no check
    assert not second.checked
    second.close()
    first.close()
    assert not ResultStore(path).checked


# Opens the store, fills it, closes it (so every page is in the main file), opens it again and
# says so, then waits to be killed with the file open.
KILLED_OPENER = """
import sys
from fabric.node.store import ResultStore
store = ResultStore(sys.argv[1])
store.put_many(b"f" * 16, [(i.to_bytes(20, "big"), bytes(100)) for i in range(2000)])
store.close()
store = ResultStore(sys.argv[1])
print("open", flush=True)
sys.stdin.read()
"""


def test_a_file_left_open_by_a_killed_node_is_checked_and_moved_aside_if_corrupt(tmp_path, caplog):
    path = tmp_path / "s.sqlite"
    opener = subprocess.Popen([sys.executable, "-c", KILLED_OPENER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert opener.stdout.readline() == "open\n"
    os.kill(opener.pid, signal.SIGKILL)
    opener.wait()
    with open(path, "r+b") as f:  # a page in the middle of the table, the header intact
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\xff" * 4096)
    assert opened_afresh(path, caplog, "integrity check failed").checked
    assert list(tmp_path.glob("s.sqlite.corrupt-*"))


def test_a_version_1_file_is_upgraded_in_place(tmp_path):
    path = tmp_path / "s.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE results (key BLOB PRIMARY KEY, fn BLOB NOT NULL, value BLOB NOT NULL, size INTEGER NOT NULL,
                              last_used INTEGER NOT NULL);
        CREATE INDEX results_fn ON results (fn);
        CREATE INDEX results_last_used ON results (last_used);
        PRAGMA user_version = 1;
    """)
    db.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?)", [(key(i), FN, b"v" * i, i, i) for i in range(1, 4)])
    db.commit()
    db.close()
    store = ResultStore(path, memory_entries=0)
    assert (store.stats().entries, store.stats().bytes) == (3, 6)
    assert store.get_many([key(2)]) == {0: b"vv"}
    store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2


def test_writes_pushed_out_of_memory_before_reaching_disk_are_still_served(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite", memory_entries=2)
    store.put_many(FN, [(key(i), b"v%d" % i) for i in range(5)])  # not flushed: 3 live only in the write queue
    assert store.get_many([key(i) for i in range(5)]) == {i: b"v%d" % i for i in range(5)}
    store.flush()
    assert store.get_many([key(0)]) == {0: b"v0"}


def test_memory_only(tmp_path):
    store = ResultStore(None, max_entries=2)
    fill(store, 3)
    assert sorted(store.get_many([key(i) for i in range(3)])) == [1, 2]
    assert (store.stats().entries, store.stats().evictions) == (2, 1)


def test_memory_only_evicts_the_least_recently_used_not_the_oldest():
    store = ResultStore(None, max_entries=3, max_bytes=35)
    fill(store, 3)
    store.get_many([key(0)])  # key 0, the oldest, is now the most recently used
    store.put_many(FN, [(key(3), b"x" * 10)])  # over both bounds: one entry must go
    assert sorted(store.get_many([key(i) for i in range(4)])) == [0, 2, 3]
    store.put_many(FN, [(key(4), b"x" * 20)])  # over the byte bound only: two must go
    assert sorted(store.get_many([key(i) for i in range(5)])) == [3, 4]
    assert (store.stats().entries, store.stats().bytes, store.stats().evictions) == (2, 30, 3)
