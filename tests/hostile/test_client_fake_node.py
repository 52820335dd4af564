"""A fake node in a client's cluster file lies in every way a heartbeat can,
while the client maps over a real node: the map is exact and the client keeps
running.

The fake is a ROUTER that answers each HELLO with forged heartbeats: peers that
are not endpoints, counts of the wrong type, endpoints of another scheme, a
peer list far too long, and bytes that are not msgpack.  Before the edge
checked endpoints, one such peer reached the client's ``connect()`` and its
I/O thread failed, failing every call."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import msgpack
import pytest
import zmq
from helpers import cluster_file, square, wait_for

import fabric
from fabric.cluster.stats import NodeStats
from fabric.config import load_config
from fabric.wire.message import Kind
from fabric.wire.protocol import PROTOCOL_VERSION, Heartbeat, from_frames, to_frames

MAP_ITEMS = 20_000


def forged_heartbeats(control: str) -> list[list[bytes]]:
    good = NodeStats(node_id=b"n-fake", name="fake", control=control, pub="tcp://127.0.0.1:1").to_info()
    lies = [
        {"peers": [["not-an-endpoint", "tcp://127.0.0.1:2"]]},
        {"peers": [["tcp://127.0.0.1:\u0665", "tcp://127.0.0.1:2"]]},
        {"pub": "inproc://nowhere"},
        {"workers": "two"},
        {"peers": [["tcp://127.0.0.1:3", "tcp://127.0.0.1:4"]] * 20_000},
        {"per_worker": [["w", "pid", 0, 0, 0.0, False]]},
    ]
    frames = [to_frames(Heartbeat(b"n-fake", {**good, **lie})) for lie in lies]
    frames.append([msgpack.packb([PROTOCOL_VERSION, int(Kind.HEARTBEAT), b"n-fake", [1, 2, 3]])])
    frames.append([b"\xc1not msgpack"])
    return frames


class FakeNode:
    """Answers every message it gets with every forged heartbeat, from a thread."""

    def __init__(self, context: zmq.Context, address: str) -> None:
        self.sock = context.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(address)
        self.answered = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(address,), daemon=True)
        self.thread.start()

    def _serve(self, address: str) -> None:
        lies = forged_heartbeats(address)
        while not self.stop.is_set():
            if not self.sock.poll(50):
                continue
            sender, *frames = self.sock.recv_multipart()
            try:
                from_frames(frames)
            except fabric.FabricError:
                continue
            for lie in lies:
                self.sock.send_multipart([sender, *lie])
            self.answered += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def cluster(start_node, tmp_path, zmq_context) -> Iterator[tuple[str, FakeNode]]:
    path = cluster_file(tmp_path / "cluster.toml", ["real", "fake"])
    start_node(config=path, name="real")
    fake = FakeNode(zmq_context, load_config(path).node("fake").address)
    yield str(path), fake
    fake.close()


def test_a_lying_node_costs_the_client_nothing(cluster):
    path, fake = cluster
    with fabric.connect(path, connect_timeout_s=60) as fx:
        wait_for(lambda: fake.answered >= 2, 20, "the fake node to lie twice")  # HELLO, then the next interval's
        assert list(fx.map(square, range(MAP_ITEMS))) == [x * x for x in range(MAP_ITEMS)]
        wait_for(lambda: fake.answered >= 4, 20, "the fake node to keep lying")
        assert fx.submit(square, 12).result(timeout=30) == 144  # the I/O thread is alive after all of it
        stats = fx.statistics()
        assert [n.name for n in stats.nodes] == ["real"]  # no forged heartbeat was believed
        assert stats.malformed >= 2 * len(forged_heartbeats("tcp://127.0.0.1:1"))
