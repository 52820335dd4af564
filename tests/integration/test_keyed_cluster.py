"""A keyed cluster on real node processes: members work, anyone else is refused with a clear error."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import free_address

import fabric
from fabric.wire.security import write_key_file


@pytest.fixture
def keyed_node(tmp_path, start_node):
    """A node started with a cluster key, its log in ``node.log``: (its address, the key file)."""
    key = write_key_file(tmp_path / "cluster.key")
    address = free_address()
    start_node(address, key_file=key.path, log=tmp_path / "node.log")
    return address, key.path


def status(address: str, *key: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fabric.cli", "status", address, *key], capture_output=True,
                          text=True, timeout=30)


def test_members_of_a_keyed_cluster_work(keyed_node):
    address, key_file = keyed_node
    with fabric.connect(address, key_file=key_file) as fx:
        assert list(fx.map(abs, range(-500, 500))) == [abs(x) for x in range(-500, 500)]
        assert fx.submit(pow, 2, 10).result() == 1024
    answered = status(address, "--key-file", key_file)
    assert answered.returncode == 0 and address in answered.stdout


@pytest.mark.parametrize("stranger", ["no key", "another key"])
def test_a_client_without_the_key_is_refused_and_told_why(keyed_node, tmp_path, stranger):
    address, key_file = keyed_node
    other = None if stranger == "no key" else write_key_file(tmp_path / "other.key").path
    with fabric.connect(address, key_file=other) as fx:  # the default connect_timeout_s: 30 s
        with pytest.raises(fabric.AuthenticationError, match="handshake with .* failed: .*key"):
            list(fx.map(abs, range(10), timeout=10))  # waiting for connect_timeout_s would be a TimeoutError
        with pytest.raises(fabric.AuthenticationError):  # later calls fail at once too
            fx.submit(abs, -1).result(timeout=5)
    refused = status(address)  # nor does the status command get an answer, and it says why
    assert refused.returncode == 1 and "handshake with" in refused.stderr and "failed" in refused.stderr
    with fabric.connect(address, key_file=key_file) as fx:  # the node kept running for its members
        assert fx.submit(abs, -7).result() == 7
    assert f"the handshake with {address} (incoming) failed" in (tmp_path / "node.log").read_text()


def test_the_embedded_cluster_takes_the_key_too(tmp_path):
    key = write_key_file(tmp_path / "cluster.key")
    with fabric.connect(workers=1, key_file=key.path) as fx:
        assert sum(fx.map(abs, range(-1000, 1000))) == 1_000_000


def test_keygen_writes_a_key_once(tmp_path):
    run = [sys.executable, "-m", "fabric.cli", "keygen", str(tmp_path / "cluster.key")]
    assert subprocess.run(run, capture_output=True, timeout=30).returncode == 0
    again = subprocess.run(run, capture_output=True, text=True, timeout=30)
    assert again.returncode == 2 and "exists" in again.stderr
