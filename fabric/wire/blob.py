"""How a stored object is laid out, in a node's store file and on the wire.

::

    offset 0   b"FOB1"  u32 header length   msgpack [kind, pickle length, [buffer lengths]]
               pickle protocol 5 stream (out-of-band buffers left out)
               each buffer, starting at a multiple of ALIGN

Readers map the file read-only and unpickle with the buffers as views of the
map, so a numpy array (or any pickle-5 out-of-band buffer) is read by every
worker of a node without a copy, read-only.  A top-level ``bytes`` object is
stored as one buffer and rebuilt as ``bytes`` (one copy in the reader: the type
owns its memory).  The same parts, in order, are what a put sends, so the
writer never joins them into one buffer.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from collections.abc import Sequence
from typing import Any

import msgpack

from ..errors import SerializationError
from . import codec

MAGIC = b"FOB1"
ALIGN = 64
_HEAD = struct.Struct("<4sI")
PICKLED, RAW_BYTES = 0, 1
MAX_HEADER_BYTES = 1 << 20


def encode(obj: Any) -> list[Any]:
    """The object's parts (buffers to write one after the other)."""
    if type(obj) is bytes:
        kind, frames = RAW_BYTES, [b"", obj]
    else:
        kind, frames = PICKLED, codec.pickle_frames(obj)
    data, buffers = frames[0], frames[1:]
    lengths = [memoryview(b).nbytes for b in buffers]
    header = msgpack.packb([kind, len(data), lengths])
    parts: list[Any] = [_HEAD.pack(MAGIC, len(header)) + header, data]
    offset = _HEAD.size + len(header) + len(data)
    for buffer, length in zip(buffers, lengths):
        pad = -offset % ALIGN
        if pad:
            parts.append(bytes(pad))
        parts.append(buffer)
        offset += pad + length
    return parts


def size(parts: Sequence[Any]) -> int:
    return sum(memoryview(p).nbytes for p in parts)


def content_key(parts: Sequence[Any]) -> bytes:
    """The content address of an object: sha256 of its parts, 16 bytes (sha256
    measured 1.4 GB/s here against 0.36 for blake2b)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.digest()[:16]


def decode(view: memoryview) -> Any:
    """The object in ``view`` (a read-only map or a received buffer); its buffers
    stay views of ``view``.  SerializationError if it is not an object."""
    try:
        magic, header_len = _HEAD.unpack_from(view, 0)
        if magic != MAGIC or header_len > MAX_HEADER_BYTES:
            raise ValueError("not a stored object")
        kind, data_len, lengths = msgpack.unpackb(view[_HEAD.size : _HEAD.size + header_len])
        offset = _HEAD.size + header_len
        data = view[offset : offset + data_len]
        offset += data_len
        buffers = []
        for length in lengths:
            offset += -offset % ALIGN
            if offset + length > view.nbytes:
                raise ValueError("truncated")
            buffers.append(view[offset : offset + length])
            offset += length
    except (ValueError, TypeError, struct.error, msgpack.UnpackException) as exc:
        raise SerializationError(f"not a stored fabric object: {exc}") from None
    if kind == RAW_BYTES:
        return bytes(buffers[0])
    return pickle.loads(data, buffers=buffers)
