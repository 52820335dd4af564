"""What every message on the wire is: a kind number, header fields each with its
check, and payload frames if its kind carries any.

The kinds are numbered in one enum for the whole wire, so no two messages share
a number; the messages themselves are defined by topic (:mod:`fabric.wire.protocol`
for the control and data planes and the result cache,
:mod:`fabric.wire.object_messages` for the object store), and
:mod:`fabric.wire.protocol` maps each number to its class and encodes and decodes them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

Buffer = Any  # bytes, memoryview or zmq.Frame: whatever supports the buffer protocol


class Kind(enum.IntEnum):
    HELLO = 1
    HEARTBEAT = 2
    GOODBYE = 3
    WORKER_UP = 4
    ATTACH = 5
    DETACH = 6
    WORKER_LOST = 7
    SHUTDOWN = 8
    READY = 9
    TASK_BATCH = 10
    RESULT_BATCH = 11
    PEER_HELLO = 12
    STATUS = 13
    STATUS_REPLY = 14
    NODE_LEAVING = 15
    WORKER_REPORT = 16
    CACHE_GET = 17
    CACHE_HITS = 18
    CACHE_PUT = 19
    CACHE_CLEAR = 20
    CACHE_CLEARED = 21
    FUNCTION_MISSING = 22
    STOP = 23
    BATCH_STARTED = 28
    WORKER_SILENT = 29
    CACHE_STORED = 33
    BATCH_RUNNING = 38
    BATCH_OUTPUT = 40
    RECYCLE_WORKER = 41
    OBJECT_PUT = 50
    OBJECT_PUT_ACK = 51
    OBJECT_GET = 52
    OBJECT_DATA = 53
    OBJECT_MISSING = 54
    OBJECT_FREE = 55
    OBJECT_ADOPT = 56
    OBJECT_LIST = 57
    OBJECT_LISTING = 58
    OBJECT_DELETE = 59
    RELOAD = 65
    RELOADED = 66


# A field's check: the exact type msgpack decodes it to (so a bool is no int), or
# that type and a predicate on the value's contents.
Check = type | tuple[type, Callable[[Any], bool]]


class Message:
    """Base of every message; subclasses are frozen dataclasses."""

    __slots__ = ()
    KIND: ClassVar[Kind]
    CHECKS: ClassVar[tuple[Check, ...]]
    HAS_PAYLOAD: ClassVar[bool] = False
    payload: Sequence[Buffer] = ()
