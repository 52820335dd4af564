"""A real worker flooded with ATTACHes past libzmq's 1,023 sockets per process:
each ATTACH whose sockets cannot be made closes what it made, and the worker
keeps serving the client it had (the node's ``max_clients`` keeps a node's own
workers far below this; the test lifts the cap to reach libzmq's)."""

from __future__ import annotations

import worker_peer
from worker_peer import result_of, running_worker, square_batch

from fabric.wire.protocol import Attach, to_frames

FLOOD = 600  # x 2 sockets > 1,023
peer = worker_peer.peer  # fixture


def test_attaches_past_the_socket_limit_leave_the_worker_serving(peer, tmp_path, no_leaked_processes):
    with running_worker(peer, str(FLOOD)) as (worker_id, process):
        for i in range(FLOOD):
            attach = Attach(b"c-fake-%d" % i, f"ipc://{tmp_path}/v{i}", f"ipc://{tmp_path}/s{i}", 2, b"n", 1 << 20)
            peer.send("control", worker_id, to_frames(attach))
        peer.send("ventilator", worker_id, square_batch(1, [1, 2, 3], with_fn=True))
        assert result_of(peer, worker_id, 1) == [1, 4, 9]
        assert process.poll() is None
