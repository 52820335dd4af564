"""Garbage at every socket a fabric binds is dropped, and the fabric keeps working.

A raw pyzmq DEALER plays a confused or hostile peer: it sends malformed
messages to the embedded node's control ROUTER and to the client's ventilator
and sink ROUTERs.  The client counts what it drops (``fx.statistics().malformed``); the
node only logs, so a STATUS request sent after the garbage, on the same
connection, proves the node read past it.
"""

from __future__ import annotations

import random
import socket

import msgpack
import pytest
import zmq
from helpers import fabric_pids, square, wait_for

from fabric.wire.message import Kind
from fabric.wire.protocol import PROTOCOL_VERSION, Goodbye, ResultBatch, Status, StatusReply, from_frames, to_frames

REPLY_TIMEOUT_S = 10.0


def _with_header(message, edit):
    """``message``'s frames with its msgpack header changed by ``edit(header)``."""
    head, *payload = to_frames(message)
    header = msgpack.unpackb(head)
    edit(header)
    return [msgpack.packb(header, use_bin_type=True), *payload]


def _set(index, value):
    def edit(header):
        header[index] = value

    return edit


def _every_field(value):
    def edit(header):
        header[2:] = [value] * (len(header) - 2)

    return edit


def _no_fields(header):
    del header[2:]


# A well-formed message to spoil: every socket parses with the same from_frames,
# and a GOODBYE from an unknown client is harmless wherever it lands.
VALID = Goodbye(b"c-intruder")

MALFORMED = {
    "random-bytes": lambda valid: [random.Random(7).randbytes(256)],
    "not-msgpack": lambda valid: [b"\xc1\xc1"],
    "empty-frame": lambda valid: [b""],
    "not-an-array": lambda valid: [msgpack.packb({"version": PROTOCOL_VERSION})],
    "wrong-version": lambda valid: _with_header(valid, _set(0, PROTOCOL_VERSION + 1)),
    "unknown-kind": lambda valid: _with_header(valid, _set(1, max(Kind) + 100)),
    "kind-not-an-int": lambda valid: _with_header(valid, _set(1, str(int(valid.KIND)))),
    "bad-field-types": lambda valid: _with_header(valid, _every_field(1.5)),
    "missing-fields": lambda valid: _with_header(valid, _no_fields),
    "payload-where-none-goes": lambda valid: [*to_frames(Status()), b"payload"],
}


@pytest.fixture
def intruder(zmq_context):
    """Connect a raw DEALER to an endpoint; closed at teardown."""
    sockets = []

    def connect(endpoint):
        sock = zmq_context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sockets.append(sock)
        return sock

    yield connect
    for sock in sockets:
        sock.close()


def endpoint_of(fx, where):
    return {"node": fx.address, "ventilator": fx._io.vent_endpoint, "sink": fx._io.sink_endpoint}[where]


def assert_still_works(fx, pids_before):
    assert fx.submit(square, 12).result(timeout=30) == 144
    assert list(fx.map(square, range(100))) == [x * x for x in range(100)]
    assert fabric_pids(fx) == pids_before, "a process of the fabric died or was replaced"


@pytest.mark.parametrize("garbage", MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.parametrize("where", ["ventilator", "sink"])
def test_a_malformed_message_to_the_client_is_counted_and_dropped(fx, intruder, where, garbage):
    pids = fabric_pids(fx)
    before = fx.statistics().malformed
    intruder(endpoint_of(fx, where)).send_multipart(garbage(VALID))
    wait_for(lambda: fx.statistics().malformed > before, REPLY_TIMEOUT_S, "the client to drop the message")
    assert fx.statistics().malformed == before + 1
    assert_still_works(fx, pids)


@pytest.mark.parametrize("garbage", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_message_to_the_node_is_dropped(fx, intruder, garbage):
    pids = fabric_pids(fx)
    sock = intruder(fx.address)
    sock.send_multipart(garbage(VALID))
    sock.send_multipart(to_frames(Status()))  # answered only once the node has read past the garbage
    assert sock.poll(REPLY_TIMEOUT_S * 1000), "the node stopped answering"
    assert isinstance(from_frames(sock.recv_multipart()), StatusReply)
    assert_still_works(fx, pids)


def test_a_forged_result_for_an_unknown_batch_is_dropped_as_a_duplicate(fx, intruder):
    pids = fabric_pids(fx)
    before = fx.statistics().duplicates
    forged = ResultBatch(2**62, 0, [], 0.0, [msgpack.packb(None)])
    intruder(fx._io.sink_endpoint).send_multipart(to_frames(forged))
    wait_for(lambda: fx.statistics().duplicates > before, REPLY_TIMEOUT_S, "the client to drop the forged result")
    assert fx.statistics().duplicates == before + 1
    assert_still_works(fx, pids)


@pytest.mark.parametrize("where", ["node", "ventilator", "sink"])
def test_bytes_that_are_not_zmtp_do_not_break_the_fabric(fx, where):
    """A port scanner's bytes on a bound endpoint (ipc or tcp)."""
    pids = fabric_pids(fx)
    endpoint = endpoint_of(fx, where)
    if endpoint.startswith("ipc://"):
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address = endpoint[len("ipc://") :]
    else:
        host, _, port = endpoint[len("tcp://") :].rpartition(":")
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = (host, int(port))
    with raw:
        raw.connect(address)
        raw.sendall(random.Random(11).randbytes(4096))
    assert_still_works(fx, pids)
