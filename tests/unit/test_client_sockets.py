"""The client's sockets: more nodes than libzmq's default 1,023 sockets per context
allow (each node costs it a control DEALER and that DEALER's handshake monitor), and
a worker's connection handed over to its newer one."""

import resource

import pytest
import zmq
from helpers import wait_for

from fabric.client.io_loop import IOLoop
from fabric.client.sockets import DEFAULT_MAX_SOCKETS
from fabric.wire.protocol import Ready, to_frames

NODES = DEFAULT_MAX_SOCKETS // 2 + 100


def test_a_client_greets_more_nodes_than_the_default_socket_limit(tmp_path):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 8 * 4 * NODES:
        pytest.skip(f"an open-file limit of {hard} allows no more sockets than libzmq's default")
    context = zmq.Context()
    loop = IOLoop(context, b"c-test", "127.0.0.1", retries=3, heartbeat_interval_s=1.0, liveness_s=3.0)
    try:
        assert context.get(zmq.MAX_SOCKETS) > 2 * NODES
        for i in range(NODES):
            loop.links.greet(f"ipc://{tmp_path}/node-{i}")  # nothing listens: connecting is lazy
        assert len(loop.links.controls) == NODES
        loop.start()
    finally:
        loop.stop()
        context.term()


def test_a_ready_under_a_handed_over_name_registers_no_phantom_worker():
    """A worker that re-attaches reconnects under its identity (ROUTER_HANDOVER); libzmq
    renames the old connection 0x00 + 4 bytes, and its READY, if still unread, arrives
    under that name (32 nodes starting on 2 cores counted 33 workers).  The name is
    given here by the peer itself: the ROUTER passes such an identity through as is."""
    context = zmq.Context()
    loop = IOLoop(context, b"c-test", "127.0.0.1", retries=3, heartbeat_interval_s=1.0, liveness_s=3.0)
    links = []
    try:
        for identity in (b"\x00\x00\x00\x00\x07", b"w-real"):
            link = context.socket(zmq.DEALER)
            link.setsockopt(zmq.IDENTITY, identity)
            link.setsockopt(zmq.LINGER, 0)
            link.connect(loop.vent_endpoint)
            link.send_multipart(to_frames(Ready(2, b"n-1")))
            links.append(link)
            wait_for(lambda: loop.vent.poll(0), 5, "the READY")
            loop._on_ready()
        assert list(loop.ventilator.node_of) == [b"w-real"] and loop.duplicates == 1
    finally:
        for link in links:
            link.close()
        loop.start()
        loop.stop()
        context.term()
