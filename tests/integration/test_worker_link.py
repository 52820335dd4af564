"""A real worker process, with this test playing its node and its client.

A worker keeps the functions it was sent per link, and a re-attach gives it a
new link: a batch the client sends without its function to the new link (the
client had shipped it to the old one) must come back as FUNCTION_MISSING, not
as a failed batch, so the client can send it again with the function.
"""

from __future__ import annotations

import worker_peer
from worker_peer import result_of, square_batch

from fabric.wire.protocol import FunctionMissing

peer, worker = worker_peer.peer, worker_peer.worker  # fixtures


def test_a_batch_without_its_function_on_a_new_link_is_answered_function_missing(peer, worker):
    peer.send("ventilator", worker, square_batch(1, [1, 2, 3], with_fn=True))
    assert result_of(peer, worker, 1) == [1, 4, 9]
    peer.send("ventilator", worker, square_batch(2, [4], with_fn=False))  # the same link keeps the function
    assert result_of(peer, worker, 2) == [16]

    peer.attach(worker)  # re-attached (the node forgot the client a while): a new, empty link
    peer.send("ventilator", worker, square_batch(3, [5, 6], with_fn=False))
    sender, reply = peer.receive("sink")
    assert (sender, reply) == (worker, FunctionMissing(3))
    peer.send("ventilator", worker, square_batch(3, [5, 6], with_fn=True))
    assert result_of(peer, worker, 3) == [25, 36]
