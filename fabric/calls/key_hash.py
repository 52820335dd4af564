"""Stable key hashing: which partition a by-key reduction puts a key in.

A key's partition must be the same in every process and for keys that are
equal.  Python's ``hash`` is salted per process for str and bytes, and the
cache's keys are exact-typed (``1`` and ``1.0`` differ there, but are one dict
key).  So str and bytes go through crc32, numbers through ``hash`` (value-based
and unsalted, so ``1``, ``1.0`` and ``True`` agree), containers and a few
stdlib types through their parts.  A key of any other type has no stable
encoding and raises :class:`~fabric.CacheKeyError` naming it.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import numbers
import pathlib
import uuid
import zlib
from typing import Any

from ..errors import CacheKeyError

MASK = (1 << 64) - 1
MAX_DEPTH = 64  # nesting of a key (tuples in tuples) before it counts as having no stable encoding
_TIMES = (datetime.date, datetime.time, datetime.timedelta)


def split(folded: dict[Any, Any], partitions: int) -> list[dict[Any, Any]]:
    """``folded`` as one dict per partition (some may be empty), by :func:`key_hash`."""
    if partitions == 1:
        _hashes(folded)  # the keys must still have a stable encoding: check them as a split would
        return [folded]
    parts: list[dict[Any, Any]] = [{} for _ in range(partitions)]
    for key, value, h in zip(folded, folded.values(), _hashes(folded)):
        parts[h % partitions][key] = value
    return parts


def _hashes(keys: dict[Any, Any]) -> list[int]:
    """:func:`key_hash` of every key; when all are str (the common case), in one C-level pass."""
    try:
        return list(map(zlib.crc32, map(str.encode, keys)))  # the bytes key_hash encodes, for any str
    except (TypeError, UnicodeEncodeError):  # another type, or a lone surrogate
        return list(map(key_hash, keys))


def partition_of(key: Any, partitions: int) -> int:
    """The partition of ``key`` among ``partitions``, the same in every process."""
    return key_hash(key) % partitions


def key_hash(key: Any) -> int:
    """A 64-bit hash of ``key``, equal for equal keys in every process.

    Raises :class:`~fabric.CacheKeyError` naming a key with no stable encoding.
    """
    kind = type(key)
    if kind is str:
        return zlib.crc32(key.encode("utf-8", "surrogatepass"))
    if kind is int or kind is bytes:
        return hash(key) & MASK if kind is int else zlib.crc32(key)
    return _other_hash(key)


def _other_hash(key: Any) -> int:
    try:
        return _stable_hash(key, 0)
    except _Unstable as exc:
        raise CacheKeyError(f"key {key!r:.80} has no stable encoding ({exc}), so no partition: use str, bytes, "
                            "numbers, None, tuples, frozensets, enums, dates, UUIDs, paths or dataclasses of them") \
            from None


class _Unstable(Exception):
    """Raised inside :func:`_stable_hash`; becomes a CacheKeyError naming the whole key."""



def _stable_hash(key: Any, depth: int) -> int:
    if depth > MAX_DEPTH:
        raise _Unstable(f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(key, str):  # a StrEnum member equals its value
        return _text_hash(str.__str__(key))
    if isinstance(key, (bytes, bytearray, memoryview)):
        return zlib.crc32(key)
    if key is None:
        return 0x9E3779B97F4A7C15
    if isinstance(key, numbers.Number):  # value-based and unsalted: 1, 1.0, True, Fraction(1) agree
        return hash(key) & MASK
    if isinstance(key, enum.Enum):  # after str and numbers, which IntEnum and StrEnum members equal
        return _text_hash(f"{_class_name(key)}.{key.name}")
    if isinstance(key, tuple):  # a namedtuple equals the plain tuple of its values
        h = 0x345678
        for part in key:
            h = ((h ^ _stable_hash(part, depth + 1)) * 1000003) & MASK
        return h ^ len(key)
    if isinstance(key, frozenset):
        return sum(_stable_hash(part, depth + 1) for part in key) & MASK ^ len(key)
    if isinstance(key, _TIMES):
        return _time_hash(key)
    if isinstance(key, uuid.UUID):
        return key.int & MASK
    if isinstance(key, pathlib.PurePath):
        return _text_hash(f"{type(key).__name__}:{key}")
    if dataclasses.is_dataclass(key) and not isinstance(key, type):
        fields = tuple(getattr(key, f.name) for f in dataclasses.fields(key) if f.compare)
        return _text_hash(_class_name(key)) ^ _stable_hash(fields, depth + 1)
    raise _Unstable(f"a value of type {type(key).__qualname__}")


def _class_name(key: Any) -> str:
    return f"{type(key).__module__}.{type(key).__qualname__}"


def _text_hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


def _time_hash(key: datetime.date | datetime.time | datetime.timedelta) -> int:
    """Equal times hash alike: aware datetimes equal at the same instant, whatever their zone."""
    if isinstance(key, datetime.datetime) and key.utcoffset() is not None:
        key = key.astimezone(datetime.UTC)
    return _text_hash(f"{type(key).__name__}:{key.isoformat() if not isinstance(key, datetime.timedelta) else key}")
