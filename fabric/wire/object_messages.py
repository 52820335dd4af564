"""The object store's messages (see :mod:`fabric.node.objects`), kinds 50-59.

On the node's object ROUTER, from clients and workers, each over a DEALER of
their own (:mod:`fabric.wire.transfer`); chunks are at most ``MAX_CHUNK_BYTES``::

    OBJECT_PUT     -> node   request_id, key, total size, offset, owner, name | one frame: the chunk
    OBJECT_PUT_ACK node ->   request_id, bytes received, done (all stored, or already held), error
    OBJECT_GET     -> node   request_id, key (b"": look ``name`` up), name, offset, length
    OBJECT_DATA    node ->   request_id, key, offset, total size | one frame: the bytes
    OBJECT_MISSING node ->   request_id, key, name: this node does not hold it
    OBJECT_LIST    -> node   request_id
    OBJECT_LISTING node ->   request_id, [[name, key, size], ...]: its named objects (or those deleted)
    OBJECT_DELETE  -> node   request_id, name; answered with OBJECT_LISTING of what it removed

On the node's control ROUTER::

    OBJECT_FREE    client -> node   owner, keys: the client holds no Ref to these any more
    OBJECT_ADOPT   worker -> node   owner, key, pinned: the worker wrote this object into its node's store

Keys, sizes, offsets, names and listings are bounded here, at the edge; the
messages are encoded and decoded with every other kind by :mod:`fabric.wire.protocol`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .message import Buffer, Kind, Message

MAX_CHUNK_BYTES = 64 << 20  # one OBJECT_PUT / OBJECT_DATA frame at most
MAX_OBJECT_BYTES = 1 << 40
MAX_LISTED = 100_000


def _is_key(value: bytes) -> bool:
    return len(value) == 16


def _is_key_or_empty(value: bytes) -> bool:
    return len(value) in (0, 16)


def _is_object_size(value: int) -> bool:
    return 0 <= value <= MAX_OBJECT_BYTES


def _is_chunk_length(value: int) -> bool:
    return 0 <= value <= MAX_CHUNK_BYTES


def _is_name(value: str) -> bool:
    return len(value) <= 256


def _is_owner(value: bytes) -> bool:
    return len(value) <= 255


def _is_keys(value: list[Any]) -> bool:
    return len(value) <= MAX_LISTED and all(type(v) is bytes and len(v) == 16 for v in value)


def _is_listing(value: list[Any]) -> bool:
    return len(value) <= MAX_LISTED and all(
        type(e) is list and len(e) == 3 and type(e[0]) is str and type(e[1]) is bytes and type(e[2]) is int
        for e in value
    )


@dataclass(frozen=True, slots=True)
class ObjectPut(Message):
    KIND = Kind.OBJECT_PUT
    HAS_PAYLOAD = True
    CHECKS = (int, (bytes, _is_key), (int, _is_object_size), (int, _is_object_size), (bytes, _is_owner),
              (str, _is_name))
    request_id: int
    key: bytes
    total: int
    offset: int
    owner: bytes
    name: str
    payload: Sequence[Buffer] = ()


@dataclass(frozen=True, slots=True)
class ObjectPutAck(Message):
    KIND = Kind.OBJECT_PUT_ACK
    CHECKS = (int, int, bool, str)
    request_id: int
    received: int
    done: bool
    error: str


@dataclass(frozen=True, slots=True)
class ObjectGet(Message):
    KIND = Kind.OBJECT_GET
    CHECKS = (int, (bytes, _is_key_or_empty), (str, _is_name), (int, _is_object_size), (int, _is_chunk_length))
    request_id: int
    key: bytes
    name: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class ObjectData(Message):
    KIND = Kind.OBJECT_DATA
    HAS_PAYLOAD = True
    CHECKS = (int, (bytes, _is_key), (int, _is_object_size), (int, _is_object_size))
    request_id: int
    key: bytes
    offset: int
    total: int
    payload: Sequence[Buffer] = ()


@dataclass(frozen=True, slots=True)
class ObjectMissing(Message):
    KIND = Kind.OBJECT_MISSING
    CHECKS = (int, bytes, str)
    request_id: int
    key: bytes
    name: str


@dataclass(frozen=True, slots=True)
class ObjectFree(Message):
    KIND = Kind.OBJECT_FREE
    CHECKS = ((bytes, _is_owner), (list, _is_keys))
    owner: bytes
    keys: list[bytes]


@dataclass(frozen=True, slots=True)
class ObjectAdopt(Message):
    KIND = Kind.OBJECT_ADOPT
    CHECKS = ((bytes, _is_owner), (bytes, _is_key), bool)
    owner: bytes
    key: bytes
    pinned: bool


@dataclass(frozen=True, slots=True)
class ObjectList(Message):
    KIND = Kind.OBJECT_LIST
    CHECKS = (int,)
    request_id: int


@dataclass(frozen=True, slots=True)
class ObjectListing(Message):
    KIND = Kind.OBJECT_LISTING
    CHECKS = (int, (list, _is_listing))
    request_id: int
    entries: list[list[Any]]


@dataclass(frozen=True, slots=True)
class ObjectDelete(Message):
    KIND = Kind.OBJECT_DELETE
    CHECKS = (int, (str, _is_name))
    request_id: int
    name: str
