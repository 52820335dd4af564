"""A node's object socket under forged and malformed requests keeps serving honest puts and gets."""

from __future__ import annotations

import os

import msgpack
import zmq
from helpers import free_address, wait_for

import fabric
from fabric.wire.message import Kind
from fabric.wire.object_messages import ObjectData, ObjectGet, ObjectMissing, ObjectPut, ObjectPutAck
from fabric.wire.protocol import PROTOCOL_VERSION, from_frames, to_frames

FAST = {"heartbeat_interval_s": 0.2, "liveness_s": 1.0}


def answer(sock: zmq.Socket) -> object:
    assert sock.poll(10_000), "the node did not answer"
    return from_frames(sock.recv_multipart())


def test_forged_and_malformed_object_requests_are_refused_and_the_node_serves_on(start_node, zmq_context):
    address = free_address()
    start_node(address, **FAST)
    with fabric.connect(address, **FAST) as fx:
        real = fx.put(os.urandom(100_000))
        endpoint = wait_for(lambda: next((n.objects for n in fx.nodes() if n.objects), None), 10, "the node")
        raw = zmq_context.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(endpoint)
        key = os.urandom(16)
        raw.send_multipart([b"not msgpack"])
        raw.send_multipart([msgpack.packb([PROTOCOL_VERSION, int(Kind.OBJECT_GET), 1])])  # too few fields
        raw.send_multipart(to_frames(ObjectPut(1, key, 10, 0, b"x", "", [b"y" * 11])))  # more than declared
        assert answer(raw).error  # refused, its partial file removed
        raw.send_multipart(to_frames(ObjectPut(2, key, 10, 0, b"x", "", [b"y" * 4])))
        assert answer(raw) == ObjectPutAck(2, 4, False, "")
        raw.send_multipart(to_frames(ObjectPut(2, key, 10, 8, b"x", "", [b"y" * 2])))  # skips bytes 4-7
        assert "expected" in answer(raw).error
        raw.send_multipart(to_frames(ObjectPut(3, key, 0, 0, b"x", "", [b""])))  # an empty object
        assert answer(raw).error
        raw.send_multipart(to_frames(ObjectGet(4, key, "", 0, 10)))  # what was refused is not there
        assert isinstance(answer(raw), ObjectMissing)
        raw.send_multipart(to_frames(ObjectGet(5, real.key, "", 1 << 30, 100)))  # past the end: nothing
        past = answer(raw)
        assert isinstance(past, ObjectData) and bytes(past.payload[0]) == b""
        raw.close()
        assert len(fx.get(real)) == 100_000
        assert fx.submit(len, real).result(timeout=30) == 100_000


def test_a_client_cannot_free_what_another_client_owns(start_node, zmq_context):
    from fabric.wire.object_messages import ObjectFree
    from fabric.wire.protocol import Status, StatusReply

    address = free_address()
    start_node(address, **FAST)
    with fabric.connect(address, **FAST) as fx:
        ref = fx.put(os.urandom(50_000))
        impostor = zmq_context.socket(zmq.DEALER)
        impostor.setsockopt(zmq.LINGER, 0)
        impostor.setsockopt(zmq.IDENTITY, b"c-impostor")
        impostor.connect(address)
        impostor.send_multipart(to_frames(ObjectFree(ref.owner, [ref.key])))  # the owner's id, from its Ref
        impostor.send_multipart(to_frames(Status()))  # answered after the FREE was handled
        assert isinstance(answer(impostor), StatusReply)
        impostor.close()
        assert len(fx.get(ref)) == 50_000
