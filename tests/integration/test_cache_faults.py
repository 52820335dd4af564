"""The result cache when its disk fails under real node processes: a corrupt shard, files made
unwritable mid-map, a read-only cache directory.  The fabric keeps running and delivers every result."""

from __future__ import annotations

import os

import pytest
from helpers import cached_double, cluster_file, double, free_address, scribble, wait_for

import fabric


@pytest.mark.timeout(60)  # unanswered lookups each waited connect_timeout_s (set above this)
def test_a_shard_corrupted_under_a_live_node_is_rebuilt_and_every_lookup_answered(tmp_path, start_node):
    address = free_address()
    node = start_node(address)
    with fabric.connect(address, connect_timeout_s=120) as fx:
        assert cached_double(fx, 3000) == (True, 0, 3000)
    node.terminate()  # a clean stop writes the shard out
    assert node.wait(timeout=20) == 0
    node = start_node(address)
    [shard] = (tmp_path / "cache").glob("*.sqlite")
    with fabric.connect(address, connect_timeout_s=120) as fx:
        wait_for(lambda: fx.workers() == 1, 20, "the restarted node's worker")
        size = os.path.getsize(shard)
        scribble(shard, size // 2, size // 4)  # pages a lookup reads only once it is fetching rows
        ok, _, _ = cached_double(fx, 3000)
        assert ok
        assert list((tmp_path / "cache").glob("*.sqlite.corrupt-*"))
        wait_for(lambda: cached_double(fx, 3000) == (True, 3000, 0), 20, "the rebuilt shard to serve hits")
    assert node.poll() is None


def test_shard_files_made_unwritable_mid_map_turn_the_cache_off_on_both_nodes(tmp_path, start_node, disk_faults):
    # Both nodes sharing the directory died of SIGBUS (exit 135) and 31,620 results were not delivered.
    config = cluster_file(tmp_path / "cluster.toml", ["n0", "n1"])
    nodes = [start_node(config=config, name=f"n{i}") for i in range(2)]
    with fabric.connect(str(config)) as fx:
        wait_for(lambda: len(fx.nodes()) == 2 and fx.workers() == 2, 20, "two nodes")
        results = fx.map(double, range(60_000), cache=True, chunksize=500)
        got = [next(results) for _ in range(20_000)]
        disk_faults.immutable(*(tmp_path / "cache").glob("*.sqlite*"))
        got += results
        assert got == [2 * x for x in range(60_000)]
        assert cached_double(fx, 1000)[0]  # and again, against shards that can no longer be written
        wait_for(lambda: all(n.cache_weight == 0 for n in fx.nodes()), 20, "both nodes to turn their cache off")
        assert cached_double(fx, 1000) == (True, 0, 1000)  # off the ring: no node is asked
    assert [node.poll() for node in nodes] == [None, None]


def test_a_read_only_cache_directory_starts_the_node_with_its_cache_off(tmp_path, start_node, disk_faults):
    # The node refused to start, and tried to move its healthy shard aside as corrupt.
    address = free_address()
    node = start_node(address)
    with fabric.connect(address) as fx:
        assert cached_double(fx, 100) == (True, 0, 100)
    node.terminate()
    assert node.wait(timeout=20) == 0
    shards = sorted(os.listdir(tmp_path / "cache"))
    disk_faults.immutable(tmp_path / "cache")  # nothing can be created in it: no journal, no new file
    log = tmp_path / "node.log"
    node = start_node(address, log=log)
    with fabric.connect(address) as fx:
        wait_for(lambda: fx.workers() == 1, 20, "the node's worker")
        assert [n.cache_weight for n in fx.nodes()] == [0]
        assert cached_double(fx, 100) == (True, 0, 100)
    assert node.poll() is None
    assert sorted(os.listdir(tmp_path / "cache")) == shards
    assert log.read_text().count("result cache off") == 1 and str(tmp_path / "cache") in log.read_text()
