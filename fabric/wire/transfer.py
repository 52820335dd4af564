"""Moving object bytes to and from a node's object socket, chunked, with credits.

Used by whoever moves an object, each from its own thread and over a DEALER of
its own (never one of the client's I/O thread): ``fx.put``/``fx.get`` in the
caller's thread, a worker fetching a Ref its node lacks from the node holding
it.  So bytes go straight between the two ends, never through a third party::

    putter ──OBJECT_PUT(chunk) × WINDOW──► node ──OBJECT_PUT_ACK──► (one more chunk per ack)
    getter ──OBJECT_GET(offset) × WINDOW─► node ──OBJECT_DATA(chunk, zero-copy from its map)──►

At most ``WINDOW`` chunks of ``CHUNK_BYTES`` are in flight per transfer, so
memory on both ends is bounded whatever the object's size, and a node serves
many transfers in turn.  A peer silent for ``timeout_s`` is taken for dead:
:class:`~fabric.ObjectLostError`; a node that answers it lacks the object:
:class:`~fabric.UnknownObjectError`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import zmq

from ..errors import FabricError, ObjectLostError, ProtocolError, UnknownObjectError
from . import security
from .object_messages import (
    ObjectData,
    ObjectDelete,
    ObjectGet,
    ObjectList,
    ObjectListing,
    ObjectMissing,
    ObjectPut,
    ObjectPutAck,
)
from .protocol import from_frames, to_frames
from .security import ClusterKey

CHUNK_BYTES = 8 << 20  # per message: large enough that per-message costs vanish, small enough to interleave
WINDOW = 4  # chunks in flight per transfer (32 MiB)
TIMEOUT_S = 10.0  # silence after which the other end is taken for dead

_request_ids = itertools.count(1)


class ObjectLink:
    """A DEALER to one node's object socket, for one thread's transfers."""

    def __init__(self, context: zmq.Context, endpoint: str, key: ClusterKey | None,
                 timeout_s: float = TIMEOUT_S) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        security.join(self.sock, key)
        try:
            self.sock.connect(endpoint)
        except zmq.ZMQError:
            self.sock.close(linger=0)
            raise

    def send(self, msg: Any) -> None:
        self.sock.send_multipart(to_frames(msg), copy=False)

    def receive(self, request_id: int) -> Any:
        """The next answer to ``request_id`` (others are stale and skipped)."""
        while True:
            if not self.sock.poll(int(self.timeout_s * 1000)):
                raise ObjectLostError(f"the node at {self.endpoint} did not answer for {self.timeout_s:.0f} s")
            try:
                msg = from_frames(self.sock.recv_multipart(copy=False))
            except ProtocolError:
                continue
            if getattr(msg, "request_id", None) == request_id:
                return msg

    def close(self) -> None:
        self.sock.close(linger=0)

    def __enter__(self) -> ObjectLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chunks(parts: Sequence[Any]) -> Iterator[memoryview]:
    """The parts cut into pieces of at most CHUNK_BYTES (none crosses a part)."""
    for part in parts:
        view = memoryview(part).cast("B")
        for start in range(0, view.nbytes, CHUNK_BYTES):
            yield view[start : start + CHUNK_BYTES]


def put(link: ObjectLink, key: bytes, parts: Sequence[Any], owner: bytes, name: str = "") -> None:
    """Store the object made of ``parts`` under ``key``; return when the node
    holds it (at once, after one chunk, when it held it already)."""
    request_id = next(_request_ids)
    total = sum(memoryview(p).nbytes for p in parts)
    pieces = chunks(parts) if total else iter([memoryview(b"")])
    offset = in_flight = 0
    for piece in pieces:
        if in_flight >= WINDOW:
            if _acked(link, request_id):
                return
            in_flight -= 1
        link.send(ObjectPut(request_id, key, total, offset, owner, name, [piece]))
        offset += piece.nbytes
        in_flight += 1
    while in_flight:
        if _acked(link, request_id):
            return
        in_flight -= 1
    raise ProtocolError(f"the node at {link.endpoint} took every chunk but did not say it stored the object")


def _acked(link: ObjectLink, request_id: int) -> bool:
    ack = link.receive(request_id)
    if not isinstance(ack, ObjectPutAck):
        raise ProtocolError(f"{type(ack).__name__} where OBJECT_PUT_ACK was expected")
    if ack.error:
        raise FabricError(f"the node at {link.endpoint} refused the object: {ack.error}")
    return ack.done


def fetch(link: ObjectLink, key: bytes, allocate: Callable[[int], memoryview], size: int | None = None) -> bytes:
    """Copy the object ``key`` into ``allocate(total)``; return its key.  ``size``,
    when known (a Ref's), must be what the node says: a node cannot make the
    reader allocate what it likes."""
    found_key, total = lookup(link, key)
    if size is not None and total != size:
        raise ProtocolError(f"the node at {link.endpoint} holds {total:,} bytes under a key of {size:,}")
    target = allocate(total)
    request_id = next(_request_ids)
    offsets = iter(range(0, total, CHUNK_BYTES))
    pending: dict[int, int] = {}  # offset -> length of each chunk asked for and not yet received

    def ask(offset: int) -> None:
        pending[offset] = min(CHUNK_BYTES, total - offset)
        link.send(ObjectGet(request_id, found_key, "", offset, pending[offset]))

    for offset in itertools.islice(offsets, WINDOW):
        ask(offset)
    while pending:
        reply = link.receive(request_id)
        if isinstance(reply, ObjectMissing):
            raise UnknownObjectError(f"object {found_key.hex()} vanished from the node at {link.endpoint}")
        if not isinstance(reply, ObjectData) or reply.key != found_key or reply.total != total:
            raise ProtocolError(f"unexpected answer {type(reply).__name__} to OBJECT_GET")
        data = memoryview(reply.payload[0])
        if pending.pop(reply.offset, None) != data.nbytes:  # every chunk asked for, once, whole
            raise ProtocolError(f"OBJECT_DATA at {reply.offset} with {data.nbytes} bytes was not asked for")
        target[reply.offset : reply.offset + data.nbytes] = data
        following = next(offsets, None)
        if following is not None:
            ask(following)
    return found_key


def lookup(link: ObjectLink, key: bytes, name: str = "") -> tuple[bytes, int]:
    """(key, size) of the object the node holds under ``key`` or ``name``;
    UnknownObjectError when it holds none."""
    request_id = next(_request_ids)
    link.send(ObjectGet(request_id, key, name, 0, 0))
    reply = link.receive(request_id)
    if isinstance(reply, ObjectMissing):
        what = f"named {name!r}" if name else key.hex()
        raise UnknownObjectError(f"no object {what} on the node at {link.endpoint}")
    if not isinstance(reply, ObjectData):
        raise ProtocolError(f"unexpected answer {type(reply).__name__} to OBJECT_GET")
    return reply.key, reply.total


def listing(link: ObjectLink, delete: str = "") -> list[list[Any]]:
    """The node's named objects as [name, key, size] (with ``delete``: removes that name, lists what went)."""
    request_id = next(_request_ids)
    link.send(ObjectDelete(request_id, delete) if delete else ObjectList(request_id))
    reply = link.receive(request_id)
    if not isinstance(reply, ObjectListing):
        raise ProtocolError(f"unexpected answer {type(reply).__name__} to OBJECT_LIST")
    return reply.entries
