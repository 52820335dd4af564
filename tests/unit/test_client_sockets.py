"""A client greets more nodes than libzmq's default 1,023 sockets per context allow
(each node costs it a control DEALER and that DEALER's handshake monitor)."""

import resource

import pytest
import zmq

from fabric.client.io_loop import DEFAULT_MAX_SOCKETS, IOLoop

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
            loop._greet(f"ipc://{tmp_path}/node-{i}")  # nothing listens: connecting is lazy
        assert len(loop.controls) == NODES
        loop.start()
    finally:
        loop.stop()
        context.term()
