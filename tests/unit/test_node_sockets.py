"""A ``connect()`` that raises leaves no socket behind, in a worker and in a node,
so ``Context.term()`` returns and the other links keep working.

The endpoints here reach ``connect()`` only because the messages are built in
the test: at the edge, ``is_endpoint`` refuses a port in other scripts' digits.
"""

from __future__ import annotations

import os

import pytest
import zmq

from fabric.config import CacheConfig, NodeSettings
from fabric.node.loop import PEER_SOCKETS_MAX, Node
from fabric.node.worker import Worker
from fabric.wire.protocol import Attach

REFUSED = "tcp://127.0.0.1:\u0665"  # an Arabic-Indic 5: libzmq's connect() raises EINVAL


def open_sockets(context: zmq.Context) -> list[zmq.Socket]:
    return [s for s in context._sockets if not s.closed]


@pytest.fixture
def worker(tmp_path):
    made = Worker(f"ipc://{tmp_path}/node", b"w-test", os.getpid(), max_clients=2)
    yield made
    made.close()  # returns: no half-made socket holds Context.term()


def attach(tmp_path, client: bytes, ventilator: str | None = None) -> Attach:
    return Attach(client, ventilator or f"ipc://{tmp_path}/v-{client.decode()}", f"ipc://{tmp_path}/s", 2, b"n", 1024)


def test_a_worker_whose_connect_raises_closes_both_sockets_and_keeps_its_links(worker, tmp_path):
    worker._attach(attach(tmp_path, b"c-1"))
    with pytest.raises(zmq.ZMQError):
        worker._attach(attach(tmp_path, b"c-2", REFUSED))
    assert list(worker.links) == [b"c-1"]
    link = worker.links[b"c-1"]
    assert sorted(map(id, open_sockets(worker.context))) == sorted(map(id, [worker.control, link.ventilator,
                                                                             link.sink]))


def test_a_worker_refuses_attach_beyond_max_clients(worker, tmp_path):
    for client in (b"c-1", b"c-2", b"c-3", b"c-4"):
        worker._attach(attach(tmp_path, client))
    assert list(worker.links) == [b"c-1", b"c-2"]
    assert worker.faults.counts["ATTACH beyond max_clients refused"] == 2
    worker._attach(attach(tmp_path, b"c-2"))  # a re-attach of a known client is no new client
    assert list(worker.links) == [b"c-1", b"c-2"]


def test_a_node_whose_peer_connect_raises_closes_the_socket(tmp_path):
    settings = NodeSettings(name="alpha", address=f"ipc://{tmp_path}/control", workers=1,
                            cache=CacheConfig(dir=str(tmp_path)))
    node = Node(settings)
    try:
        before = len(open_sockets(node.context))
        node._greet(REFUSED)
        assert node.peers == {} and len(open_sockets(node.context)) == before
        assert node.state.faults.counts[f"cannot connect to peer {REFUSED!r}"] == 1
    finally:
        node._stop()  # returns: Context.term() has no half-made socket to wait for


def test_a_node_keeps_a_bounded_number_of_peer_sockets(tmp_path):
    settings = NodeSettings(name="alpha", address=f"ipc://{tmp_path}/control", workers=1,
                            cache=CacheConfig(dir=str(tmp_path)))
    node = Node(settings)
    try:
        node._greet(f"ipc://{tmp_path}/peer-0")
        before = len(open_sockets(node.context))  # the first peer: its DEALER and its handshake monitor
        for i in range(1, 3 * PEER_SOCKETS_MAX):
            node._greet(f"ipc://{tmp_path}/peer-{i}")
            node._greet(f"ipc://{tmp_path}/peer-0")  # greeted again: the most recent, kept
        assert len(node.peers) == PEER_SOCKETS_MAX and f"ipc://{tmp_path}/peer-0" in node.peers
        assert len(open_sockets(node.context)) == before + 2 * (PEER_SOCKETS_MAX - 1)
    finally:
        node._stop()
