"""A node's result-store shard: bounds, LRU order, persistence, corruption recovery, checksums,
broken disks, stats."""

import logging
import os
import signal
import sqlite3
import subprocess
import sys

import pytest
from helpers import scribble

from fabric.errors import StoreError
from fabric.node.store import SCHEMA_VERSION, ResultStore

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
from fabric.node.store import SCHEMA_VERSION, ResultStore
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
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


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


def filled_and_reopened(path, n=5000, size=200):
    """A store of ``n`` entries, every page in the main file, reopened with no memory layer."""
    store = ResultStore(path, memory_entries=0)
    store.put_many(FN, [(key(i), bytes([i % 256]) * size) for i in range(n)])
    store.close()
    return ResultStore(path, memory_entries=0)


OPERATIONS = {
    "get": lambda store: store.get_many([key(i) for i in range(5000)]),
    "flush": lambda store: (store.put_many(FN, [(key(i), b"new") for i in range(5000, 6000)]), store.flush()),
    "clear": lambda store: store.clear(FN),
}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_file_corrupted_under_a_live_store_is_moved_aside_and_rebuilt(tmp_path, caplog, operation):
    # sqlite raised DatabaseError from fetchall(), outside the store's conversion: the node never
    # answered the lookup, and the same error from a flush killed it.
    path = tmp_path / "s.sqlite"
    store = filled_and_reopened(path)
    scribble(path, 4096, os.path.getsize(path) - 4096)  # every page but the schema's
    with caplog.at_level(logging.WARNING, logger="fabric.node.store"), pytest.raises(StoreError):
        OPERATIONS[operation](store)
    assert caplog.text.count("moved aside") == 1
    assert list(tmp_path.glob("s.sqlite.corrupt-*"))
    assert store.stats().entries == store.pending
    fill(store, 2)
    assert store.get_many([key(0), key(1)]) == {0: b"\0" * 10, 1: b"\1" * 10}
    store.close()


def test_a_value_damaged_on_disk_is_a_miss_and_is_dropped(tmp_path, caplog):
    path = tmp_path / "s.sqlite"
    store = ResultStore(path)
    store.put_many(FN, [(key(1), b"<" * 64 + b"precious" + b">" * 64), (key(2), b"other")])
    store.close()
    at = path.read_bytes().index(b"precious")
    with open(path, "r+b") as f:  # one flipped byte, which sqlite itself does not notice
        f.seek(at)
        f.write(b"P")
    store = ResultStore(path, memory_entries=0)
    with caplog.at_level(logging.WARNING, logger="fabric.node.store"):
        assert store.get_many([key(1), key(2)]) == {1: b"other"}
    assert "1 entries failed their checksum" in caplog.text
    assert (store.stats().entries, store.stats().bytes) == (1, 5)
    assert store.get_many([key(1)]) == {}
    store.close()


def test_a_read_only_directory_turns_the_cache_off_and_leaves_the_shard_alone(tmp_path, disk_faults, caplog):
    # The node refused to start, after trying to move the healthy shard aside as corrupt.
    where = disk_faults.tmpfs(tmp_path / "cache")
    healthy = ResultStore(where / "s.sqlite")
    fill(healthy, 3)
    healthy.close()
    disk_faults.read_only(where)
    with caplog.at_level(logging.WARNING, logger="fabric.node.store"):
        store = ResultStore(where / "s.sqlite")
        store.put_many(FN, [(key(9), b"x")])
        store.flush()
        assert store.get_many([key(0), key(9)]) == {}
    assert caplog.text.count("result cache off") == 1
    assert str(where) in caplog.text and "readonly database" in caplog.text
    assert sorted(os.listdir(where)) == ["s.sqlite"]
    assert (store.stats().entries, store.stats().enabled) == (0, False)
    store.close()


def rows_in(path):
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT count(*) FROM results").fetchone()[0]
    finally:
        db.close()


def test_a_full_disk_turns_the_cache_off_and_never_counts_what_was_not_stored(tmp_path, disk_faults, caplog):
    where = disk_faults.tmpfs(tmp_path / "cache", "256k")
    path = where / "s.sqlite"
    store = ResultStore(path, memory_entries=0)
    with caplog.at_level(logging.WARNING, logger="fabric.node.store"):
        for batch in range(1000):
            store.put_many(FN, [(key(batch * 10 + i), os.urandom(1000)) for i in range(10)])
            try:
                store.flush()
            except StoreError:
                break
            assert store.stats().entries == rows_in(path)
        else:
            pytest.fail("the 256 KiB disk never filled")
    assert caplog.text.count("result cache off") == 1 and str(where) in caplog.text
    assert (store.stats().entries, store.stats().bytes, store.stats().enabled) == (0, 0, False)
    store.put_many(FN, [(key(0), b"x")])
    assert store.get_many([key(0)]) == {}
    store.close()


# Two openers of one file, as two nodes sharing a cache directory: each writes and reads,
# says so, then goes on after the test has made the files unwritable.
SHARING_OPENER = """
import sys
from fabric.errors import StoreError
from fabric.node.store import ResultStore
store = ResultStore(sys.argv[1], memory_entries=10)
def work(rounds, start):
    for r in range(rounds):
        keys = [(start + r * 100 + i).to_bytes(20, "big") for i in range(100)]
        try:
            store.put_many(b"f" * 16, [(k, bytes(300)) for k in keys])
            store.flush()
            store.get_many(keys)
        except StoreError:
            pass
work(20, int(sys.argv[2]))
print("writing", flush=True)
sys.stdin.readline()
work(50, int(sys.argv[2]) + 10_000)
print("alive", flush=True)
"""


def test_files_made_unwritable_under_two_live_openers_are_an_error_not_a_signal(tmp_path, disk_faults):
    # WAL's memory-mapped index turned chattr +i mid-run into SIGBUS (exit 135) in both nodes.
    path = tmp_path / "s.sqlite"
    openers = [subprocess.Popen([sys.executable, "-c", SHARING_OPENER, str(path), str(n * 100_000)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for n in range(2)]
    try:
        assert [p.stdout.readline() for p in openers] == ["writing\n"] * 2
        disk_faults.immutable(*tmp_path.glob("s.sqlite*"))
        for opener in openers:
            opener.stdin.write("go\n")
            opener.stdin.flush()
        said = [p.stdout.readline() for p in openers]
        assert (said, [p.wait(timeout=30) for p in openers]) == (["alive\n"] * 2, [0, 0])
    finally:
        for opener in openers:
            opener.kill()
            opener.wait()
