"""The result cache across real node processes: owners on the ring, replicas survive a node kill."""

from __future__ import annotations

import os
import signal

import pytest
from helpers import cluster_file, wait_for

import fabric
from fabric.client.cache_key import call_key, function_digest, item_keys
from fabric.cluster.ring import CacheRing


@pytest.fixture
def three_nodes(tmp_path, start_node):
    """Three fabric-node processes of one cluster file, 1 worker each, replicas = 2: (the file, the nodes)."""
    config = cluster_file(tmp_path / "cluster.toml", ["n0", "n1", "n2"], "[cache]", "replicas = 2")
    return config, [start_node(config=config, name=f"n{i}") for i in range(3)]


def double(x):
    return 2 * x


def test_replicas_keep_every_result_when_a_node_dies(three_nodes):
    config, nodes = three_nodes
    with fabric.connect(str(config)) as fx:
        wait_for(lambda: len(fx.nodes()) == 3 and fx.workers() == 3, 20, "three nodes")
        assert list(fx.map(double, range(300), cache=True)) == [2 * x for x in range(300)]
        wait_for(lambda: fx.cache.stats().entries == 600, 10, "every result stored twice")
        per_node = fx.cache.stats().nodes
        assert all(200 - 60 < n["entries"] < 200 + 60 for n in per_node.values()), per_node  # spread by the ring
        os.kill(nodes[0].pid, signal.SIGKILL)
        wait_for(lambda: len(fx.nodes()) == 2, 10, "the killed node declared dead")
        before = fx.cache.stats()
        assert list(fx.map(double, range(300), cache=True)) == [2 * x for x in range(300)]
        after = fx.cache.stats()
        assert (after.hits - before.hits, after.misses - before.misses) == (300, 0)


def test_a_restarted_node_owns_what_its_shard_kept(three_nodes, start_node):
    # A node is on the ring by name: restarted, it owns the same keys and serves them from its file.
    config, nodes = three_nodes
    with fabric.connect(str(config)) as fx:
        wait_for(lambda: len(fx.nodes()) == 3 and fx.workers() == 3, 20, "three nodes")
        list(fx.map(double, range(300), cache=True))
        wait_for(lambda: fx.cache.stats().entries == 600, 10, "every result stored twice")
        [first] = [n.node_id for n in fx.nodes() if n.name == "n0"]
        nodes[0].terminate()  # a clean stop: its shard is written out
        assert nodes[0].wait(timeout=20) == 0
        start_node(config=config, name="n0")

        def back_under_a_new_id() -> bool:
            ids = [n.node_id for n in fx.nodes() if n.name == "n0"]
            return len(fx.nodes()) == 3 and len(ids) == 1 and ids != [first] and fx.workers() == 3

        wait_for(back_under_a_new_id, 20, "n0 back under a new id, the old one gone")
        before = fx.cache.stats()
        assert list(fx.map(double, range(300), cache=True)) == [2 * x for x in range(300)]
        after = fx.cache.stats()
        assert (after.hits - before.hits, after.misses - before.misses) == (300, 0)


def node_name(_: object) -> str:
    return fabric.current_worker().node


def test_a_cached_miss_runs_on_its_keys_owner(tmp_path, start_node):
    # The owner is read off a ring built from the heartbeats as the client builds its own; locality_wait_s is
    # long, so each miss waits for its owner's one worker rather than running on the other node.
    config = cluster_file(tmp_path / "cluster.toml", ["alpha", "beta"], "[store]", "locality_wait_s = 30")
    for name in ("alpha", "beta"):
        start_node(config=config, name=name)
    with fabric.connect(str(config)) as fx:
        wait_for(lambda: len(fx.nodes()) == 2 and fx.workers() == 2, 20, "two nodes")
        ring = CacheRing()
        ring.update(fx.nodes())
        names = {n.node_id: n.name for n in fx.nodes()}
        items = list(range(40))
        owners = [names[ring.owners(key)[0]] for key in item_keys(function_digest(node_name), items, False)]
        assert set(owners) == {"alpha", "beta"}  # the keys split between the nodes
        assert list(fx.map(node_name, items, cache=True, chunksize=8)) == owners
        assert fx.options(cache=True).submit(node_name, 40).result(timeout=30) == names[
            ring.owners(call_key(function_digest(node_name), (40,), {}))[0]]
        before = fx.cache.stats()
        assert list(fx.map(node_name, items, cache=True)) == owners  # each stored where it was computed
        assert fx.cache.stats().hits - before.hits == 40
