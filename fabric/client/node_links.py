"""The client's links to its nodes: one control DEALER per node, by control endpoint.

::

    IOLoop ── greet, survey, rejoin, send, leave ──► NodeLinks ── HELLO, STATUS, GOODBYE, ... ──► node
    IOLoop ◄── messages(sock): parsed, heartbeats' NodeStats ── NodeLinks ◄── HEARTBEAT, WORKER_LOST, ... ── node

Whom to greet and when is the cluster view's decision, and what a node's
message means is the I/O loop's; this holds the sockets between them.  The
first greeting connects the DEALER (HELLO is then re-sent every heartbeat
interval as the client's heartbeat), and a monitor watches its handshake, so a
node refusing our key shows as a stated reason and not only as silence.  Used
by the I/O thread only (:mod:`fabric.client.io_loop`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator

import zmq

from ..cluster.stats import NodeStats
from ..errors import ProtocolError
from ..wire import security
from ..wire.message import Message
from ..wire.protocol import Goodbye, Heartbeat, Hello, Shutdown, Status, from_frames, to_frames
from ..wire.security import ClusterKey
from .sockets import control_dealer


class NodeLinks:
    """A control DEALER to each node greeted, and their handshakes' monitors."""

    def __init__(self, context: zmq.Context, key: ClusterKey | None, poller: zmq.Poller, hello: Hello) -> None:
        """``hello`` is what greets every node; the DEALERs and monitors join ``poller``."""
        self.context = context
        self.key = key
        self.poller = poller
        self.hello = hello
        self.handshakes = security.HandshakeWatch(keyed=key is not None)
        self.controls: dict[str, zmq.Socket] = {}

    def greet(self, control: str) -> None:
        """Say HELLO on the node's control DEALER, connecting it first if new."""
        sock = self.controls.get(control)
        if sock is None:
            sock = self.controls[control] = control_dealer(self.context, self.key, self.hello.client_id)
            self.poller.register(self.handshakes.watch(sock, control), zmq.POLLIN)
            sock.connect(control)
            self.poller.register(sock, zmq.POLLIN)
        _say(sock, self.hello)

    def survey(self, control: str) -> None:
        """Ask a greeted node for every member it knows (STATUS)."""
        _say(self.controls[control], Status())

    def rejoin(self, control: str) -> None:
        """GOODBYE, then HELLO: a node back from the dead attaches its workers afresh."""
        sock = self.controls[control]
        _say(sock, Goodbye(self.hello.client_id))
        _say(sock, self.hello)

    def send(self, control: str, msg: Message) -> bool:
        """Send on a greeted node's control DEALER; False if unknown or refused."""
        sock = self.controls.get(control)
        if sock is None:
            return False
        try:
            sock.send_multipart(to_frames(msg), zmq.NOBLOCK, copy=False)
        except zmq.ZMQError:
            return False
        return True

    @staticmethod
    def messages(sock: zmq.Socket, malformed: Callable[[ProtocolError], None]
                 ) -> Iterator[tuple[Message, NodeStats | None]]:
        """The messages waiting on one DEALER, parsed, each with its heartbeat's
        stats (None for other kinds); a malformed one goes to ``malformed``."""
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = from_frames(frames)
                stats = NodeStats.from_info(msg.info) if isinstance(msg, Heartbeat) else None
            except ProtocolError as exc:
                malformed(exc)
                continue
            yield msg, stats

    def leave(self, shutdown: Collection[str]) -> None:
        """GOODBYE to every node, and SHUTDOWN to those at a control in ``shutdown`` (embedded ones)."""
        for control, sock in self.controls.items():
            _say(sock, Goodbye(self.hello.client_id))
            if control in shutdown:
                _say(sock, Shutdown())

    def close(self) -> None:
        self.handshakes.close()
        for sock in self.controls.values():
            sock.close()


def _say(sock: zmq.Socket, msg: Message) -> None:
    """Send on a control socket, or drop: a connection that failed its handshake
    queues nothing, and HELLO is repeated every heartbeat anyway."""
    try:
        sock.send_multipart(to_frames(msg), zmq.NOBLOCK)
    except zmq.Again:
        pass
