"""The result cache across real node processes: owners on the ring, replicas survive a node kill."""

from __future__ import annotations

import os
import signal

import pytest
from helpers import cluster_file, wait_for

import fabric


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
