"""The result cache across real node processes: owners on the ring, replicas survive a node kill."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
from helpers import wait_for

import fabric

HEARTBEAT = ["--heartbeat-interval", "0.2", "--liveness", "1.0"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def three_nodes(tmp_path):
    """Three fabric-node processes, 1 worker each, caches in their own dirs, replicas = 2."""
    addresses = [f"tcp://127.0.0.1:{free_port()}" for _ in range(3)]
    config = tmp_path / "cluster.toml"
    lines = ["[cluster]", "heartbeat_interval_s = 0.2", "liveness_s = 1.0", "[cache]", "replicas = 2"]
    for i, address in enumerate(addresses):
        lines += ["[[node]]", f'name = "n{i}"', f'address = "{address}"', "workers = 1"]
    config.write_text("\n".join(lines) + "\n")

    def start(i: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "fabric.cli", "start", "--config", str(config), "--name", f"n{i}",
             "--cache-dir", str(tmp_path / f"cache{i}"), *HEARTBEAT],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},  # the test's functions import on workers
        )

    nodes = [start(i) for i in range(3)]
    try:
        yield config, nodes, start
    finally:
        for node in nodes:
            node.kill()
            node.wait()


def double(x):
    return 2 * x


def test_replicas_keep_every_result_when_a_node_dies(three_nodes):
    config, nodes, _ = three_nodes
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


def test_a_restarted_node_owns_what_its_shard_kept(three_nodes):
    # A node is on the ring by name: restarted, it owns the same keys and serves them from its file.
    config, nodes, start = three_nodes
    with fabric.connect(str(config)) as fx:
        wait_for(lambda: len(fx.nodes()) == 3 and fx.workers() == 3, 20, "three nodes")
        list(fx.map(double, range(300), cache=True))
        wait_for(lambda: fx.cache.stats().entries == 600, 10, "every result stored twice")
        [first] = [n.node_id for n in fx.nodes() if n.name == "n0"]
        nodes[0].terminate()  # a clean stop: its shard is written out
        assert nodes[0].wait(timeout=20) == 0
        nodes[0] = start(0)

        def back_under_a_new_id() -> bool:
            ids = [n.node_id for n in fx.nodes() if n.name == "n0"]
            return len(fx.nodes()) == 3 and len(ids) == 1 and ids != [first] and fx.workers() == 3

        wait_for(back_under_a_new_id, 20, "n0 back under a new id, the old one gone")
        before = fx.cache.stats()
        assert list(fx.map(double, range(300), cache=True)) == [2 * x for x in range(300)]
        after = fx.cache.stats()
        assert (after.hits - before.hits, after.misses - before.misses) == (300, 0)
