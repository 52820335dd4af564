"""The node's object socket: object bytes in and out, beside the control plane.

::

    client / worker / peer DEALER ──OBJECT_PUT(chunk)──► ROUTER (bound) ──► ObjectStore (temp file, then its tier)
                                  ◄─OBJECT_PUT_ACK─────
                                  ──OBJECT_GET(offset)─►                ◄── map of the object's file
                                  ◄─OBJECT_DATA(chunk)─  (a view of the map, sent without a copy)
                                  ──OBJECT_LIST / OBJECT_DELETE──► named objects

A socket of its own, so that large transfers neither share the control
ROUTER's size cap nor queue behind (or in front of) heartbeats and HELLOs; the
node's loop polls it with the rest.  Every transfer is paced by its requester
(see :mod:`fabric.wire.transfer`), so the node holds at most a window of
chunks per transfer.  A put of an object the store holds already is answered
``done`` after its first chunk: equal objects cross the network once.  A put
whose chunks do not follow each other, or that exceeds its declared size, is
refused and its partial file removed.
"""

from __future__ import annotations

import logging

import zmq

from ..errors import ProtocolError
from ..wire.message import Message
from ..wire.object_messages import (
    MAX_CHUNK_BYTES,
    ObjectData,
    ObjectDelete,
    ObjectGet,
    ObjectList,
    ObjectListing,
    ObjectMissing,
    ObjectPut,
    ObjectPutAck,
)
from ..wire.protocol import from_frames, to_frames
from .objects import ObjectStore
from .processes import Faults

log = logging.getLogger(__name__)

SOCKET_SLACK_BYTES = 1 << 20
MAX_MESSAGES_PER_TURN = 256  # then the loop's other sockets (heartbeats) get their turn...
MAX_BYTES_PER_TURN = 64 << 20  # ...or after about this many bytes written or served


class ObjectServer:
    """Serves one node's :class:`ObjectStore` on its object ROUTER."""

    def __init__(self, store: ObjectStore, sock: zmq.Socket, faults: Faults) -> None:
        self.store = store
        self.sock = sock
        self.faults = faults
        self.served_bytes = 0
        self.received_bytes = 0

    def on_readable(self) -> None:
        moved = 0
        for _ in range(MAX_MESSAGES_PER_TURN):
            if moved > MAX_BYTES_PER_TURN:
                return
            try:
                sender, *frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            moved += sum(len(frame) for frame in frames) + MAX_CHUNK_BYTES // 8  # a read serves ~a chunk
            try:
                msg = from_frames(frames)
                self._handle(sender.bytes, msg)
            except (ProtocolError, ValueError, OSError) as exc:
                self.faults.record("dropped an object request", exc)

    def _handle(self, sender: bytes, msg: Message) -> None:
        if isinstance(msg, ObjectPut):
            self._on_put(sender, msg)
        elif isinstance(msg, ObjectGet):
            self._on_get(sender, msg)
        elif isinstance(msg, ObjectList):
            self._send(sender, ObjectListing(msg.request_id, self.store.listing()))
        elif isinstance(msg, ObjectDelete):
            self._send(sender, ObjectListing(msg.request_id, self.store.delete(msg.name)))
        else:
            raise ProtocolError(f"{type(msg).__name__} on the object socket")

    def _on_put(self, sender: bytes, msg: ObjectPut) -> None:
        store = self.store
        incoming = store.incoming.get((sender, msg.request_id))
        if incoming is None:
            if msg.offset != 0:
                return  # the rest of a put already answered (done, or refused)
            if store.claim(msg.key, msg.owner, msg.name):
                self._send(sender, ObjectPutAck(msg.request_id, msg.total, True, ""))
                return
            try:
                incoming = store.begin(sender, msg.request_id, msg.key, msg.total, msg.owner, msg.name)
            except (ValueError, OSError) as exc:
                self._send(sender, ObjectPutAck(msg.request_id, 0, False, str(exc)))
                return
        chunk = memoryview(msg.payload[0])
        try:
            if msg.offset != incoming.received or msg.total != incoming.total or chunk.nbytes > MAX_CHUNK_BYTES:
                raise ValueError(f"chunk at {msg.offset} of {msg.total} where {incoming.received} of "
                                 f"{incoming.total} was expected")
            store.write(incoming, chunk)
            self.received_bytes += chunk.nbytes
            if incoming.received == incoming.total:
                store.commit(sender, msg.request_id)
                self._send(sender, ObjectPutAck(msg.request_id, incoming.total, True, ""))
            else:
                self._send(sender, ObjectPutAck(msg.request_id, incoming.received, False, ""))
        except (ValueError, OSError) as exc:
            store.abandon(sender, msg.request_id)
            self._send(sender, ObjectPutAck(msg.request_id, incoming.received, False, str(exc)))

    def _on_get(self, sender: bytes, msg: ObjectGet) -> None:
        found = self.store.find(msg.key, msg.name)
        if found is None:
            self._send(sender, ObjectMissing(msg.request_id, msg.key, msg.name))
            return
        key, total = found
        view = self.store.read(key, msg.offset, msg.length) if msg.length else memoryview(b"")
        if view is None:
            self._send(sender, ObjectMissing(msg.request_id, msg.key, msg.name))
            return
        self.served_bytes += view.nbytes
        self._send(sender, ObjectData(msg.request_id, key, msg.offset, total, [view]), copy=view.nbytes < 65536)

    def _send(self, to: bytes, msg: Message, copy: bool = True) -> None:
        try:
            self.sock.send_multipart([to, *to_frames(msg)], zmq.NOBLOCK, copy=copy)
        except zmq.ZMQError as exc:  # the requester is gone (ROUTER_MANDATORY) or not reading
            log.debug("object socket: cannot answer %r: %s", to, exc)
