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
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "fabric.cli", "start", "--config", str(config), "--name", f"n{i}",
             "--cache-dir", str(tmp_path / f"cache{i}"), *HEARTBEAT],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},  # the test's functions import on workers
        )
        for i in range(3)
    ]
    try:
        yield config, nodes
    finally:
        for node in nodes:
            node.kill()
            node.wait()


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
