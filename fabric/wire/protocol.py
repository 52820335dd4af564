"""The wire: its frames, the codec of every kind, and the control, data and cache messages.

A message is one ZeroMQ multipart message (after any ROUTER routing-id frame)::

    frame 0      header   msgpack array [PROTOCOL_VERSION, kind, field, field, ...]
    frame 1..n   payload  raw bytes (serialized tasks, results, functions), never
                          inspected by a router; sent without copying when large

Control plane (client <-> node, worker <-> node, node <-> node, on the node's ROUTER)::

    HELLO        client -> node     client_id, ventilator endpoint, sink endpoint, size cap, forward
                                    output; re-sent every heartbeat interval as the client's heartbeat
    GOODBYE      client -> node     client_id
    PEER_HELLO   node   -> node     node_id, control endpoint, heartbeat endpoint
    HEARTBEAT    node   -> anyone   node_id, info map (see fabric.cluster.stats.NodeStats): the
                                    reply to HELLO and PEER_HELLO, and what the node PUBlishes
    STATUS       anyone -> node     (asks for the node's view of the cluster)
    STATUS_REPLY node   -> asker    list of info maps, one per live node
    NODE_LEAVING node   -> client   node_id: re-queue what its workers hold; also PUBlished,
                                    so peers and clients see the node leave at once
    WORKER_UP    worker -> node     worker_id, pid
    WORKER_REPORT worker -> node    tasks done, failed, busy seconds, running now
    BATCH_RUNNING worker -> node    client_id, batch_id: the acknowledged batch the worker starts,
                                    or (b"", 0) when it is done; the node's heartbeat lists it, so a
                                    client exempts a long batch from liveness only while it runs
    ATTACH       node   -> worker   client_id, ventilator, sink, credits, node_id, size cap, forward
                                    output (capture what the client's tasks print, or leave it in the log)
    DETACH       node   -> worker   client_id
    WORKER_LOST  node   -> client   worker_id, exit code, reason
    WORKER_SILENT client -> node    worker_id: the worker went silent on this client's data plane
                                    while holding work, which went elsewhere; the node attaches it
                                    to the client afresh (new link, new READY)
    RECYCLE_WORKER client -> node   worker_id: the worker runs work its client abandoned (a
                                    KeyboardInterrupt); the node kills and replaces it
    SHUTDOWN     node   -> worker / client -> embedded node
    STOP         anyone -> node     stop as on SIGTERM (``fabric-node stop``); answered with NODE_LEAVING
    RELOAD       anyone -> node     import the task modules again and restart the workers between
                                    batches (``fabric-node reload``, as SIGHUP)
    RELOADED     node   -> asker    ok, what was loaded or why not

Result cache (client <-> the key's owner node, see fabric.client.cache)::

    CACHE_GET     client -> node   request_id, keys
    CACHE_HITS    node -> client   request_id, indices of the keys found | one frame: msgpack list of values
    CACHE_PUT     client -> node   request_id, function digest, keys | one frame: msgpack list of values
    CACHE_STORED  node -> client   request_id, entries taken: the write-back is the node's now
    CACHE_CLEAR   client -> node   request_id, function digest, everything (True: every function's
                                   entries, and the digest must be empty; False: a digest is required)
    CACHE_CLEARED node -> client   request_id, entries removed

Object store (kinds 50-59: OBJECT_PUT ... OBJECT_DELETE, on the node's object ROUTER, and
OBJECT_FREE, OBJECT_ADOPT on its control ROUTER): see :mod:`fabric.wire.object_messages`.

Data plane (worker <-> client, never through the node)::

    READY        worker -> ventilator   credits (batches it may hold, from now on), node_id
    TASK_BATCH   ventilator -> worker   batch_id, fn digest, mode, codec, item frame
                                        counts, has_fn, items, ack | [fn] + item payload frames
    BATCH_STARTED worker -> sink        batch_id: the worker starts the batch (sent when the
                                        batch asked for it with ``ack``: a long or unmeasured one)
    BATCH_OUTPUT worker -> sink         batch_id, records [task index, stream, text]: what the batch's
                                        tasks printed, sent just before its RESULT_BATCH, only if any
    RESULT_BATCH worker -> sink         batch_id, codec, errors, elapsed_s | result frames
    FUNCTION_MISSING worker -> sink     batch_id: the batch came without its function, which
                                        this worker does not have (it re-attached since the
                                        function was shipped); the client sends it again with it

This module maps every kind number to its class (``_BY_KIND``, the object
store's included) and encodes and decodes them all.  Anything that does not
parse raises :class:`~fabric.errors.ProtocolError`, which each receive loop
logs and drops; the receiver keeps running.  Every field that becomes an
address, a size or a count is checked at the edge: endpoints by scheme and form
(:func:`fabric.wire.endpoint.is_endpoint`), credits within ``1..MAX_CREDITS``,
size caps within ``1..MAX_MESSAGE_BYTES_CAP``.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import msgpack
import zmq

from ..errors import ProtocolError
from .endpoint import is_endpoint
from .message import Buffer, Kind, Message
from .object_messages import (
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

PROTOCOL_VERSION = 1
MAX_CREDITS = 64  # batches one worker may hold; a READY or ATTACH above it is forged (prefetch is 1-4)
MAX_MESSAGE_BYTES_CAP = 1 << 40  # the largest size cap a peer may announce
MAX_CLIENTS_CAP = 500  # clients one node attaches: 2 sockets each per worker, under libzmq's 1,023 per process


class Mode(enum.IntEnum):
    """How a worker applies the function to each item of a batch."""

    MAP = 0  # fn(item); the batch payload is one list of items
    STARMAP = 1  # fn(*item); the batch payload is one list of argument tuples
    CALL = 2  # fn(*args, **kwargs); one payload per item, holding (args, kwargs)
    FOLD = 3  # fn(items) once: the batch's one result (fabric.calls.fold.Fold); the payload as MAP's


_MODES = frozenset(Mode)


def _is_mode(value: int) -> bool:
    return value in _MODES


def _is_credits(value: int) -> bool:
    return 0 < value <= MAX_CREDITS


def _is_size_cap(value: int) -> bool:
    return 0 < value <= MAX_MESSAGE_BYTES_CAP


def _is_list_of_int(value: list[Any]) -> bool:
    return all(type(v) is int and v >= 0 for v in value)


def _is_error_list(value: list[Any]) -> bool:
    """Errors are [index, type name, message, traceback, pickled exception or None]."""
    return all(
        type(e) is list
        and len(e) == 5
        and type(e[0]) is int
        and type(e[1]) is str
        and type(e[2]) is str
        and type(e[3]) is str
        and (e[4] is None or type(e[4]) is bytes)
        for e in value
    )


MAX_OUTPUT_RECORDS = 1 << 20  # a batch's output is bounded in characters on the worker; records too


def _is_output_list(value: list[Any]) -> bool:
    """Output records are [task index >= 0, stream (1 stdout, 2 stderr), text]."""
    return len(value) <= MAX_OUTPUT_RECORDS and all(
        type(r) is list and len(r) == 3 and type(r[0]) is int and r[0] >= 0 and type(r[1]) is int and r[1] in (1, 2)
        and type(r[2]) is str
        for r in value
    )


def _is_str_map(value: dict[Any, Any]) -> bool:
    return all(type(k) is str for k in value)


def _is_list_of_str_maps(value: list[Any]) -> bool:
    return all(type(v) is dict and _is_str_map(v) for v in value)


def _is_list_of_bytes(value: list[Any]) -> bool:
    return all(type(v) is bytes for v in value)


@dataclass(frozen=True, slots=True)
class Hello(Message):
    KIND = Kind.HELLO
    CHECKS = (bytes, (str, is_endpoint), (str, is_endpoint), (int, _is_size_cap), bool)
    client_id: bytes
    ventilator: str
    sink: str
    max_message_bytes: int
    forward_output: bool = True


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    KIND = Kind.HEARTBEAT
    CHECKS = (bytes, (dict, _is_str_map))
    node_id: bytes
    info: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PeerHello(Message):
    KIND = Kind.PEER_HELLO
    CHECKS = (bytes, (str, is_endpoint), (str, is_endpoint))
    node_id: bytes
    control: str
    pub: str


@dataclass(frozen=True, slots=True)
class Status(Message):
    KIND = Kind.STATUS
    CHECKS = ()


@dataclass(frozen=True, slots=True)
class StatusReply(Message):
    KIND = Kind.STATUS_REPLY
    CHECKS = ((list, _is_list_of_str_maps),)
    nodes: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class NodeLeaving(Message):
    KIND = Kind.NODE_LEAVING
    CHECKS = (bytes,)
    node_id: bytes


@dataclass(frozen=True, slots=True)
class WorkerReport(Message):
    KIND = Kind.WORKER_REPORT
    CHECKS = (int, int, float, bool)
    done: int
    failed: int
    busy_s: float
    running: bool


@dataclass(frozen=True, slots=True)
class BatchRunning(Message):
    KIND = Kind.BATCH_RUNNING
    CHECKS = (bytes, int)
    client_id: bytes  # b"": the worker runs no acknowledged batch
    batch_id: int


@dataclass(frozen=True, slots=True)
class Goodbye(Message):
    KIND = Kind.GOODBYE
    CHECKS = (bytes,)
    client_id: bytes


@dataclass(frozen=True, slots=True)
class WorkerUp(Message):
    KIND = Kind.WORKER_UP
    CHECKS = (bytes, int)
    worker_id: bytes
    pid: int


@dataclass(frozen=True, slots=True)
class Attach(Message):
    KIND = Kind.ATTACH
    CHECKS = (bytes, (str, is_endpoint), (str, is_endpoint), (int, _is_credits), bytes, (int, _is_size_cap), bool)
    client_id: bytes
    ventilator: str
    sink: str
    credits: int
    node_id: bytes
    max_message_bytes: int
    forward_output: bool = True


@dataclass(frozen=True, slots=True)
class Detach(Message):
    KIND = Kind.DETACH
    CHECKS = (bytes,)
    client_id: bytes


@dataclass(frozen=True, slots=True)
class WorkerLost(Message):
    KIND = Kind.WORKER_LOST
    CHECKS = (bytes, int, str)
    worker_id: bytes
    exitcode: int
    reason: str


@dataclass(frozen=True, slots=True)
class RecycleWorker(Message):
    KIND = Kind.RECYCLE_WORKER
    CHECKS = (bytes,)
    worker_id: bytes


@dataclass(frozen=True, slots=True)
class Shutdown(Message):
    KIND = Kind.SHUTDOWN
    CHECKS = ()


@dataclass(frozen=True, slots=True)
class Stop(Message):
    KIND = Kind.STOP
    CHECKS = ()


@dataclass(frozen=True, slots=True)
class Reload(Message):
    KIND = Kind.RELOAD
    CHECKS = ()


@dataclass(frozen=True, slots=True)
class Reloaded(Message):
    KIND = Kind.RELOADED
    CHECKS = (bool, str)
    ok: bool
    detail: str  # the tasks now defined, or why the modules did not load


@dataclass(frozen=True, slots=True)
class Ready(Message):
    KIND = Kind.READY
    CHECKS = ((int, _is_credits), bytes)
    credits: int
    node_id: bytes


@dataclass(frozen=True, slots=True)
class TaskBatch(Message):
    """``item_frames[i]`` is how many payload frames item ``i`` spans (CALL mode);
    MAP/STARMAP batches have a single item list, so ``item_frames`` is ``[k]``."""

    KIND = Kind.TASK_BATCH
    HAS_PAYLOAD = True
    CHECKS = (int, bytes, (int, _is_mode), int, (list, _is_list_of_int), bool, int, bool)
    batch_id: int
    digest: bytes
    mode: int
    codec: int
    item_frames: list[int]
    has_fn: bool
    n_items: int
    ack: bool  # answer BATCH_STARTED when starting it
    payload: Sequence[Buffer] = ()


@dataclass(frozen=True, slots=True)
class BatchStarted(Message):
    KIND = Kind.BATCH_STARTED
    CHECKS = (int,)
    batch_id: int


@dataclass(frozen=True, slots=True)
class WorkerSilent(Message):
    KIND = Kind.WORKER_SILENT
    CHECKS = (bytes,)
    worker_id: bytes


@dataclass(frozen=True, slots=True)
class BatchOutput(Message):
    KIND = Kind.BATCH_OUTPUT
    CHECKS = (int, (list, _is_output_list))
    batch_id: int
    records: list[list[Any]]


@dataclass(frozen=True, slots=True)
class ResultBatch(Message):
    KIND = Kind.RESULT_BATCH
    HAS_PAYLOAD = True
    CHECKS = (int, int, (list, _is_error_list), float)
    batch_id: int
    codec: int
    errors: list[list[Any]]
    elapsed_s: float
    payload: Sequence[Buffer] = ()


@dataclass(frozen=True, slots=True)
class FunctionMissing(Message):
    KIND = Kind.FUNCTION_MISSING
    CHECKS = (int,)
    batch_id: int


@dataclass(frozen=True, slots=True)
class CacheGet(Message):
    KIND = Kind.CACHE_GET
    CHECKS = (int, (list, _is_list_of_bytes))
    request_id: int
    keys: list[bytes]


@dataclass(frozen=True, slots=True)
class CacheHits(Message):
    KIND = Kind.CACHE_HITS
    HAS_PAYLOAD = True
    CHECKS = (int, (list, _is_list_of_int))
    request_id: int
    indices: list[int]
    payload: Sequence[Buffer] = ()


@dataclass(frozen=True, slots=True)
class CachePut(Message):
    KIND = Kind.CACHE_PUT
    HAS_PAYLOAD = True
    CHECKS = (int, bytes, (list, _is_list_of_bytes))
    request_id: int
    fn_digest: bytes
    keys: list[bytes]
    payload: Sequence[Buffer] = ()


@dataclass(frozen=True, slots=True)
class CacheStored(Message):
    KIND = Kind.CACHE_STORED
    CHECKS = (int, int)
    request_id: int
    stored: int


@dataclass(frozen=True, slots=True)
class CacheClear(Message):
    """Exactly one of a function digest and ``everything``: an empty digest alone
    once meant "all", so one malformed or forged request wiped every shard."""

    KIND = Kind.CACHE_CLEAR
    CHECKS = (int, bytes, bool)
    request_id: int
    fn_digest: bytes
    everything: bool


@dataclass(frozen=True, slots=True)
class CacheCleared(Message):
    KIND = Kind.CACHE_CLEARED
    CHECKS = (int, int)
    request_id: int
    removed: int


_BY_KIND: dict[int, type[Message]] = {
    cls.KIND: cls
    for cls in (
        Hello, Heartbeat, Goodbye, WorkerUp, Attach, Detach, WorkerLost, Shutdown, Ready, TaskBatch, ResultBatch,
        PeerHello, Status, StatusReply, NodeLeaving, WorkerReport, CacheGet, CacheHits, CachePut, CacheClear,
        CacheCleared, FunctionMissing, Stop, BatchStarted, WorkerSilent, CacheStored, BatchRunning, BatchOutput,
        RecycleWorker, ObjectPut, ObjectPutAck, ObjectGet, ObjectData, ObjectMissing, ObjectFree, ObjectAdopt,
        ObjectList, ObjectListing, ObjectDelete, Reload, Reloaded,
    )
}
_HEADER_FIELDS: dict[type[Message], tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls) if f.name != "payload") for cls in _BY_KIND.values()  # type: ignore[arg-type]
}


def _field_getter(names: tuple[str, ...]) -> Callable[[Message], tuple[Any, ...]]:
    if len(names) == 1:
        return lambda msg: (getattr(msg, names[0]),)
    return operator.attrgetter(*names) if names else lambda msg: ()


@dataclass(frozen=True)
class _Schema:
    """What from_frames checks of one kind's header fields, compiled for speed:
    the exact type of every field in one comparison, then each contents predicate."""

    kind: int
    names: tuple[str, ...]
    types: tuple[type, ...]
    predicates: tuple[tuple[int, Callable[[Any], bool]], ...]
    values_of: Callable[[Message], tuple[Any, ...]]

    @classmethod
    def of(cls, message: type[Message]) -> _Schema:
        checks = message.CHECKS
        names = _HEADER_FIELDS[message]
        types = tuple(c if isinstance(c, type) else c[0] for c in checks)
        predicates = tuple((i, c[1]) for i, c in enumerate(checks) if not isinstance(c, type))
        return cls(int(message.KIND), names, types, predicates, _field_getter(names))


_SCHEMAS: dict[type[Message], _Schema] = {cls: _Schema.of(cls) for cls in _BY_KIND.values()}
_packer = msgpack.Packer(use_bin_type=True)
_SNDMORE, _NOBLOCK = int(zmq.SNDMORE), int(zmq.NOBLOCK)  # plain ints: flag arithmetic on enums is slow


def to_frames(msg: Message) -> list[Buffer]:
    """Header frame followed by the message's payload frames."""
    schema = _SCHEMAS[type(msg)]
    header = [PROTOCOL_VERSION, schema.kind, *schema.values_of(msg)]
    return [_packer.pack(header), *msg.payload]


def from_frames(frames: Sequence[Buffer]) -> Message:
    """Parse one message; raise :class:`ProtocolError` on anything malformed."""
    if not frames:
        raise ProtocolError("empty message")
    try:
        header = msgpack.unpackb(frames[0], raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:
        raise ProtocolError(f"header is not msgpack: {exc}") from None
    if type(header) is not list or len(header) < 2:
        raise ProtocolError("header is not an array of [version, kind, ...]")
    version, kind = header[0], header[1]
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r}, expected {PROTOCOL_VERSION}")
    cls = _BY_KIND.get(kind) if type(kind) is int else None
    if cls is None:
        raise ProtocolError(f"unknown message kind {kind!r}")
    values = header[2:]
    _check_fields(cls, _SCHEMAS[cls], values)
    payload = frames[1:]
    if payload and not cls.HAS_PAYLOAD:
        raise ProtocolError(f"{cls.__name__} carries no payload, got {len(payload)} frames")
    expected = _expected_frames(cls, values)
    if expected is not None and expected != len(payload):
        raise ProtocolError(f"{cls.__name__}: {len(payload)} payload frames, its header says {expected}")
    if payload:
        return cls(*values, payload=payload)  # type: ignore[call-arg]
    return cls(*values)  # type: ignore[call-arg]


def _check_fields(cls: type[Message], schema: _Schema, values: list[Any]) -> None:
    if len(values) != len(schema.types):
        raise ProtocolError(f"{cls.__name__}: {len(values)} fields, expected {len(schema.types)}")
    bad = _bad_field(schema, values)
    if bad is not None:
        raise ProtocolError(f"{cls.__name__}.{schema.names[bad]}: bad value {values[bad]!r:.80}")


def _bad_field(schema: _Schema, values: list[Any]) -> int | None:
    """The index of the first field that fails its check, or None."""
    types = tuple(map(type, values))
    if types != schema.types:
        return next(i for i, (got, wanted) in enumerate(zip(types, schema.types)) if got is not wanted)
    for index, predicate in schema.predicates:
        if not predicate(values[index]):
            return index
    return None


def send_frames(sock: zmq.Socket, frames: Sequence[Buffer], copy: bool = True) -> None:
    """``send_multipart`` for the data plane, without its per-call type checks
    and flag arithmetic on enums, which cost more than the send of a small batch."""
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        sock.send(frame, _SNDMORE if index < last else 0, copy=copy)


def recv_frames(sock: zmq.Socket) -> list[zmq.Frame]:
    """``recv_multipart(NOBLOCK, copy=False)`` for the data plane: each frame says
    whether more follow, where ``recv_multipart`` asks the socket for every one."""
    frame = sock.recv(_NOBLOCK, copy=False)
    frames = [frame]
    while frame.more:
        frame = sock.recv(_NOBLOCK, copy=False)
        frames.append(frame)
    return frames


def _expected_frames(cls: type[Message], values: list[Any]) -> int | None:
    """Payload frames a header promises, where it says."""
    if cls is TaskBatch:
        return sum(values[4]) + values[5]
    if cls is CacheHits:
        return 1 if values[1] else 0
    if cls is CachePut:
        return 1 if values[2] else 0
    if cls is ObjectPut or cls is ObjectData:
        return 1
    return None
