"""Who may write the result cache: sealed entries on a keyed cluster, explicit clears, and
write-backs that a normal exit does not lose."""

from __future__ import annotations

import logging
import os
import pathlib
import pickle
import sqlite3
import stat

import pytest
import zmq
from helpers import cached_double, cluster_file, free_address, wait_for

import fabric
from fabric.node.store import checksum
from fabric.wire.protocol import CacheClear, CacheCleared, from_frames, to_frames
from fabric.wire.security import write_key_file


class Touch:
    """Unpickling this creates a file: code run by whoever unpickles a forged entry."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return pathlib.Path(self.path).touch, ()


@pytest.fixture
def keyed_pair(tmp_path, start_node):
    """Two keyed fabric-node processes of one cluster file, 1 worker each: the cluster file."""
    write_key_file(tmp_path / "cluster.key")
    config = cluster_file(tmp_path / "cluster.toml", ["n0", "n1"], 'key_file = "cluster.key"')
    for name in ("n0", "n1"):
        start_node(config=config, name=name)
    return config


def connect_both(config):
    fx = fabric.connect(str(config))
    wait_for(lambda: len(fx.nodes()) == 2 and fx.workers() == 2, 20, "two nodes")
    return fx


def test_a_normal_exit_leaves_every_write_back_stored(keyed_pair):
    # Write-backs still on their way when the client closed its sockets were lost (299 hits, 1 miss):
    # now every write-back is acknowledged and a normal exit waits for the acknowledgements.
    with connect_both(keyed_pair) as fx:
        assert cached_double(fx, 300) == (True, 0, 300)
    with connect_both(keyed_pair) as fx:
        assert cached_double(fx, 300) == (True, 300, 0)


def test_entries_forged_on_a_nodes_disk_are_misses_never_unpickled(tmp_path, start_node, caplog):
    # A forged entry was unpickled by the next client: it ran code there and returned wrong values.
    key = write_key_file(tmp_path / "cluster.key")
    address = free_address()
    node = start_node(address, key_file=key.path)
    with fabric.connect(address, key_file=key.path) as fx:
        assert cached_double(fx, 50) == (True, 0, 50)
    node.terminate()
    assert node.wait(timeout=20) == 0
    marker = tmp_path / "forged-entry-ran"
    forged = bytes(32) + pickle.dumps(Touch(str(marker)))  # an entry made without the cluster key
    [shard] = (tmp_path / "cache").glob("*.sqlite")
    with sqlite3.connect(shard) as db:
        db.execute("UPDATE results SET value = ?, checksum = ?", (forged, checksum(forged)))
    db.close()
    start_node(address, key_file=key.path)
    with fabric.connect(address, key_file=key.path) as fx, caplog.at_level(logging.WARNING):
        wait_for(lambda: fx.workers() == 1, 20, "the restarted node's worker")
        assert cached_double(fx, 50) == (True, 0, 50)
    assert not marker.exists()
    assert "do not carry the cluster key's seal" in caplog.text


def test_a_clear_with_neither_a_function_nor_everything_clears_nothing(fresh_fx, zmq_context):
    # An empty digest alone used to mean "everything": one request wiped every shard.
    fresh_fx.cache.clear()
    assert cached_double(fresh_fx, 20) == (True, 0, 20)
    sock = zmq_context.socket(zmq.DEALER)
    sock.connect(fresh_fx._embedded.endpoint)
    sock.send_multipart(to_frames(CacheClear(7, b"", False)))
    assert sock.poll(10_000)
    reply = from_frames(sock.recv_multipart())
    sock.close(linger=0)
    assert reply == CacheCleared(7, 0)
    assert cached_double(fresh_fx, 20) == (True, 20, 0)
    assert fresh_fx.cache.clear() == 20  # everything, said explicitly
    assert cached_double(fresh_fx, 20) == (True, 0, 20)


def test_the_embedded_nodes_socket_directory_is_private(fresh_fx):
    # Without a key, whoever can open the ipc sockets can write the cache: only this user may.
    mode = stat.S_IMODE(os.stat(fresh_fx._embedded.dir).st_mode)
    assert mode == 0o700, oct(mode)
