"""How the client's sockets are made: the data plane's two bound ROUTERs, a
control DEALER per node, the libzmq I/O threads they run on, and how many
sockets and workers this process's descriptors allow.

Only the I/O thread (:mod:`fabric.client.io_loop`) opens and uses them; this
module holds their options and the limits, so the loop reads as what it does.
"""

from __future__ import annotations

import logging
import resource

import zmq

from ..wire import security
from ..wire.security import ClusterKey

log = logging.getLogger(__name__)

HWM = 100_000  # credits keep queues far below this; it only guards against a bug
CONNECT_RETRY_MS = 10  # reconnect quickly to a node that is still binding (start-up time)
CONNECT_RETRY_MAX_MS = 1000  # then back off: a node that is down, or refuses our key, is not hammered
GOODBYE_LINGER_MS = 200  # how long closing waits to deliver GOODBYE; a node missing it forgets us by liveness
READY_MAX_BYTES = 1 << 10  # the ventilator only ever receives READY (~20 bytes): a peer sending more is cut off
# A result batch's payload frames are capped at max_message_bytes by the worker; its header (error records
# with tracebacks) is not, and this much more keeps a batch of failures from being cut off as oversized.
HEADER_SLACK_BYTES = 64 << 20
# With a key, two libzmq I/O threads keep data and control apart (ZMQ_AFFINITY is a bit
# mask of them): CurveZMQ encrypts a whole message at once in its I/O thread (~1 s per GiB
# here), which must not hold up heartbeats and HELLO, or a live node is declared dead.
# Without a key one thread interleaves large writes with the rest, and a second one cost
# ~13 % of W2's submit rate on 2 vCPUs (interleaved A/B, 17.6 k against 20.2 k tasks/s).
DATA_AFFINITY = 1
CONTROL_AFFINITY = 2
NOFILE_FALLBACK = 1 << 20  # the soft descriptor limit asked for when the hard one is unlimited
DEFAULT_MAX_SOCKETS = 1023  # libzmq's ZMQ_MAX_SOCKETS_DFLT


def io_threads(key: ClusterKey | None) -> int:
    """libzmq I/O threads for a client's context: two with a key, else one."""
    return 1 if key is None else 2


def _apart(sock: zmq.Socket, key: ClusterKey | None, affinity: int) -> None:
    """Put ``sock`` on the data or the control I/O thread, where there are two."""
    if io_threads(key) > 1:
        sock.setsockopt(zmq.AFFINITY, affinity)


def data_router(context: zmq.Context, key: ClusterKey | None, max_bytes: int) -> zmq.Socket:
    """A data-plane ROUTER (to bind); libzmq disconnects a peer whose message
    part exceeds ``max_bytes`` before buffering it (ZMQ_MAXMSGSIZE)."""
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    _apart(sock, key, DATA_AFFINITY)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    # A worker that re-attaches reconnects under the same identity: its new connection
    # must take over at once, or its READY is dropped as a duplicate and it is never used.
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.LINGER, 0)
    security.serve(sock, key)
    return sock


def control_dealer(context: zmq.Context, key: ClusterKey | None, client_id: bytes) -> zmq.Socket:
    """A DEALER to one node's control ROUTER (to connect), named by the client's id."""
    sock = context.socket(zmq.DEALER)
    _apart(sock, key, CONTROL_AFFINITY)
    sock.setsockopt(zmq.IDENTITY, client_id)
    sock.setsockopt(zmq.LINGER, GOODBYE_LINGER_MS)
    sock.setsockopt(zmq.RECONNECT_IVL, CONNECT_RETRY_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, CONNECT_RETRY_MAX_MS)
    security.join(sock, key)
    return sock


def bind(sock: zmq.Socket, where: str, name: str) -> str:
    """Bind to a random tcp port of host ``where``, or to ``name`` inside the
    ipc directory ``where`` (``ipc:///dir``); return the endpoint."""
    if where.startswith("ipc://"):
        endpoint = f"{where}/{name}"
        sock.bind(endpoint)
        return endpoint
    sock.bind_to_random_port(f"tcp://{where}")
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def raise_fd_limit() -> None:
    """Raise this process's soft limit of open files to its hard limit: every
    node and worker connection costs the client descriptors (a TCP connection
    per socket pair, libzmq's mailboxes), and the usual soft limit of 1,024
    runs out near a few hundred workers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NOFILE_FALLBACK if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.debug("client: could not raise the open-file limit from %d to %d: %s", soft, target, exc)


def max_sockets(context: zmq.Context) -> int:
    """libzmq sockets this client may open.  libzmq's default of 1,023 per context
    bound the client near 500 nodes (each node costs it a control DEALER and that
    DEALER's handshake monitor); the descriptors are what really limit: the
    quarter of the open-file limit that ``max_workers`` leaves, about two per
    socket (its mailbox, its connection)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = NOFILE_FALLBACK if soft == resource.RLIM_INFINITY else soft
    return max(DEFAULT_MAX_SOCKETS, min(context.get(zmq.SOCKET_LIMIT), limit // 8))


def max_workers() -> int:
    """Workers one client serves at once: each costs it two connections (a
    descriptor each) besides libzmq's own; a quarter of the open-file limit is
    kept for everything else."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = NOFILE_FALLBACK if soft == resource.RLIM_INFINITY else soft
    return max(1, limit * 3 // 8)
