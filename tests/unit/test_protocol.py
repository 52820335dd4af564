"""Every message survives a round trip; anything malformed raises ProtocolError."""

import msgpack
import pytest

from fabric.errors import ProtocolError
from fabric.wire.endpoint import is_endpoint
from fabric.wire.message import Kind
from fabric.wire.object_messages import (
    ObjectAdopt,
    ObjectData,
    ObjectDelete,
    ObjectFree,
    ObjectGet,
    ObjectList,
    ObjectListing,
    ObjectMissing,
    ObjectPut,
    ObjectPutAck,
)
from fabric.wire.protocol import (
    PROTOCOL_VERSION,
    Attach,
    BatchOutput,
    BatchRunning,
    BatchStarted,
    CacheClear,
    CacheCleared,
    CacheGet,
    CacheHits,
    CachePut,
    CacheStored,
    Detach,
    FunctionMissing,
    Goodbye,
    Heartbeat,
    Hello,
    NodeLeaving,
    PeerHello,
    Ready,
    RecycleWorker,
    Reload,
    Reloaded,
    ResultBatch,
    Shutdown,
    Status,
    StatusReply,
    Stop,
    TaskBatch,
    WorkerLost,
    WorkerReport,
    WorkerSilent,
    WorkerUp,
    from_frames,
    to_frames,
)

MESSAGES = [
    Hello(b"c-1", "ipc:///tmp/x/ventilator", "tcp://127.0.0.1:5000", 1 << 30),
    Heartbeat(b"n-1", {"name": "alpha", "workers": 4, "peers": [["tcp://a:1", "tcp://a:2"]]}),
    Goodbye(b"c-1"),
    PeerHello(b"n-1", "tcp://127.0.0.1:7100", "tcp://127.0.0.1:7101"),
    Status(),
    StatusReply([{"name": "alpha"}, {"name": "beta"}]),
    NodeLeaving(b"n-1"),
    WorkerReport(10, 1, 0.5, True),
    WorkerUp(b"w-1", 1234),
    Attach(b"c-1", "ipc:///v", "ipc:///s", 2, b"n-1", 1 << 30),
    Attach(b"c-1", "ipc:///v", "ipc:///s", 2, b"n-1", 1 << 30, False),
    Hello(b"c-1", "ipc:///v", "ipc:///s", 1 << 30, False),
    RecycleWorker(b"w-1"),
    BatchOutput(7, [[0, 1, "hello\n"], [3, 2, "warning\n"]]),
    Detach(b"c-1"),
    WorkerLost(b"w-1", -9, "killed by signal SIGKILL"),
    Shutdown(),
    Stop(),
    Ready(2, b"n-1"),
    FunctionMissing(7),
    BatchStarted(7),
    BatchRunning(b"c-1", 7),
    Reload(),
    Reloaded(True, "wordcount"),
    WorkerSilent(b"w-1"),
    TaskBatch(7, b"\x01" * 16, 2, 0, [1, 2], True, 2, True, [b"fn", b"a", b"b0", b"b1"]),
    ResultBatch(7, 1, [[3, "ValueError", "bad", "tb", None]], 0.25, [b"results"]),
    CacheGet(3, [b"k" * 20, b"j" * 20]),
    CacheHits(3, [1], [b"\x91\xc4\x05value"]),
    CachePut(3, b"f" * 16, [b"k" * 20], [b"\x91\xc4\x05value"]),
    CacheStored(3, 1),
    CacheClear(4, b"", True),
    CacheClear(5, b"f" * 16, False),
    CacheCleared(4, 12),
    ObjectPut(9, b"k" * 16, 100, 0, b"c-1", "", [b"chunk"]),
    ObjectPutAck(9, 5, False, ""),
    ObjectGet(9, b"", "corpus", 0, 0),
    ObjectData(9, b"k" * 16, 0, 100, [b"chunk"]),
    ObjectMissing(9, b"k" * 16, ""),
    ObjectFree(b"c-1", [b"k" * 16]),
    ObjectAdopt(b"c-1", b"k" * 16, True),
    ObjectList(10),
    ObjectListing(10, [["corpus", b"k" * 16, 100]]),
    ObjectDelete(11, "corpus"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    frames = to_frames(msg)
    back = from_frames(frames)
    assert back == msg or (type(back) is type(msg) and list(back.payload) == list(msg.payload))
    assert back.KIND == msg.KIND


def test_payload_frames_are_kept_as_given():
    batch = TaskBatch(1, b"d", 0, 0, [2], False, 5, False, [b"x", memoryview(b"y")])
    back = from_frames(to_frames(batch))
    assert [bytes(p) for p in back.payload] == [b"x", b"y"]


def header(*fields):
    return msgpack.packb(list(fields), use_bin_type=True)


MALFORMED = {
    "empty": [],
    "not msgpack": [b"\xc1\xc1\xc1"],
    "not an array": [header()[:0] + msgpack.packb({"v": 1})],
    "wrong version": [header(PROTOCOL_VERSION + 1, Kind.READY, 1)],
    "unknown kind": [header(PROTOCOL_VERSION, 99)],
    "kind is not int": [header(PROTOCOL_VERSION, "READY", 1)],
    "too few fields": [header(PROTOCOL_VERSION, Kind.HELLO, b"c")],
    "too many fields": [header(PROTOCOL_VERSION, Kind.READY, 1, 2)],
    "wrong type": [header(PROTOCOL_VERSION, Kind.READY, "two", b"n")],
    "bool for int": [header(PROTOCOL_VERSION, Kind.READY, True, b"n")],
    "bad mode": [header(PROTOCOL_VERSION, Kind.TASK_BATCH, 1, b"d", 7, 0, [1], False, 1, False), b"x"],
    "frame count mismatch": [header(PROTOCOL_VERSION, Kind.TASK_BATCH, 1, b"d", 0, 0, [2], False, 1, False), b"x"],
    "negative frame count": [header(PROTOCOL_VERSION, Kind.TASK_BATCH, 1, b"d", 0, 0, [-1], False, 1, False)],
    "bad error record": [header(PROTOCOL_VERSION, Kind.RESULT_BATCH, 1, 0, [[1, "E"]], 0.1), b"r"],
    "payload on control message": [header(PROTOCOL_VERSION, Kind.READY, 1, b"n"), b"extra"],
    "heartbeat info not a map": [header(PROTOCOL_VERSION, Kind.HEARTBEAT, b"n", [1, 2])],
    "status reply of non-maps": [header(PROTOCOL_VERSION, Kind.STATUS_REPLY, [1])],
    "cache hits without their values": [header(PROTOCOL_VERSION, Kind.CACHE_HITS, 1, [0, 1])],
    "cache put keys not bytes": [header(PROTOCOL_VERSION, Kind.CACHE_PUT, b"f", ["k"]), b"v"],
    # Fields that become an address, a size or a credit: checked at the edge.
    "peer endpoint not an endpoint": [
        header(PROTOCOL_VERSION, Kind.PEER_HELLO, b"n", "not-an-endpoint", "tcp://1.2.3.4:5")
    ],
    "hello sink with unknown scheme": [
        header(PROTOCOL_VERSION, Kind.HELLO, b"c", "tcp://127.0.0.1:5", "udp://x:1", 1024, True)
    ],
    "attach ventilator port out of range": [
        header(PROTOCOL_VERSION, Kind.ATTACH, b"c", "tcp://127.0.0.1:70000", "ipc:///s", 2, b"n", 1024, True)
    ],
    "relative ipc path": [header(PROTOCOL_VERSION, Kind.PEER_HELLO, b"n", "ipc://relative", "tcp://1.2.3.4:5")],
    "endpoint with a space": [header(PROTOCOL_VERSION, Kind.PEER_HELLO, b"n", "tcp://a b:1", "tcp://1.2.3.4:5")],
    "zero credits": [header(PROTOCOL_VERSION, Kind.READY, 0, b"n")],
    "a million credits": [header(PROTOCOL_VERSION, Kind.READY, 1_000_000, b"n")],
    "attach with a million credits": [
        header(PROTOCOL_VERSION, Kind.ATTACH, b"c", "ipc:///v", "ipc:///s", 1_000_000, b"n", 1024, True)
    ],
    "negative size cap": [header(PROTOCOL_VERSION, Kind.HELLO, b"c", "ipc:///v", "ipc:///s", -1, True)],
    "output of a negative task": [header(PROTOCOL_VERSION, Kind.BATCH_OUTPUT, 1, [[-1, 1, "x"]])],
    "output to a third stream": [header(PROTOCOL_VERSION, Kind.BATCH_OUTPUT, 1, [[0, 3, "x"]])],
    "output that is not text": [header(PROTOCOL_VERSION, Kind.BATCH_OUTPUT, 1, [[0, 1, b"x"]])],
    "output record too short": [header(PROTOCOL_VERSION, Kind.BATCH_OUTPUT, 1, [[0, "x"]])],
    "object key of the wrong length": [header(PROTOCOL_VERSION, Kind.OBJECT_FREE, b"c", [b"short"])],
    "object put with a negative offset": [
        header(PROTOCOL_VERSION, Kind.OBJECT_PUT, 1, b"k" * 16, 10, -1, b"c", ""), b"x"
    ],
    "object put without its chunk": [header(PROTOCOL_VERSION, Kind.OBJECT_PUT, 1, b"k" * 16, 10, 0, b"c", "")],
    "object get of more than a chunk": [header(PROTOCOL_VERSION, Kind.OBJECT_GET, 1, b"k" * 16, "", 0, 1 << 40)],
    "object listing with a bad entry": [header(PROTOCOL_VERSION, Kind.OBJECT_LISTING, 1, [["n", 3, 4]])],
}


@pytest.mark.parametrize("frames", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_raises_protocol_error(frames):
    with pytest.raises(ProtocolError):
        from_frames(frames)


def test_every_kind_has_a_message_class():
    kinds = {type(m).KIND for m in MESSAGES}
    assert kinds == set(Kind)


@pytest.mark.parametrize("endpoint", [
    "tcp://127.0.0.1:7100", "tcp://[::1]:7100", "tcp://node-7.example:7100", "tcp://198.18.0.2:1",
    "ipc:///tmp/fabric-x/ventilator",
])
def test_endpoints_fabric_binds_are_accepted(endpoint):
    assert is_endpoint(endpoint)


@pytest.mark.parametrize("endpoint", [
    "", "not-an-endpoint", "tcp://127.0.0.1", "tcp://127.0.0.1:0", "tcp://127.0.0.1:x", "tcp://:7100",
    "tcp://a b:1", "inproc://x", "ipc://relative", "ipc:///" + "x" * 200, "tcp://" + "a" * 300 + ":1",
    "tcp://1.2.3.4:\u0665",  # an Arabic-Indic 5: int() reads it, libzmq's connect() raises EINVAL
])
def test_anything_else_is_not_an_endpoint(endpoint):
    assert not is_endpoint(endpoint)
