"""FoldByKey: shipped in place of a mapper, folds one batch's pairs per key into partitions.

Built by ``map_reduce(..., by_key=True)`` in the client and run on a worker
once per batch (Mode.FOLD, as :class:`~fabric.calls.fold.Fold`)::

    items --mapper--> (key, value) pairs --fold per key--> {key: partial}
          --partition_of(key)--> [ pickled {key: partial} for each partition ]   one result per batch

The mapper's pairs never leave the worker: one pickled dict per partition does, and
a key lives in one partition on every worker, so partitions can be merged
apart from each other (the shuffle of MapReduce, Spark's ``reduceByKey``).

A key's partition comes from :func:`key_hash`, which must give the same
number in every process for keys that are equal: Python's ``hash`` is salted
per process for str and bytes, and the cache's keys are exact-typed (``1``
and ``1.0`` differ there, but are one dict key).  So str and bytes go through
crc32, numbers through ``hash`` (value-based and unsalted, so ``1``, ``1.0``
and ``True`` agree), containers and a few stdlib types through their parts.
A key of any other type has no stable encoding and raises
:class:`~fabric.CacheKeyError` naming it, on the worker, before any partial
leaves it.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
import itertools
import numbers
import operator
import pathlib
import pickle
import uuid
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle

from ..errors import CacheKeyError, SerializationError
from .fold import NO_INITIAL, Reducer, pickled_initial

MASK = (1 << 64) - 1
MAX_PARTITIONS = 1 << 16  # every batch returns one blob per partition, empty or not
MAX_DEPTH = 64  # nesting of a key (tuples in tuples) before it counts as having no stable encoding
_MISSING: Any = object()
_IMMUTABLE = frozenset({int, float, complex, bool, str, bytes, type(None), frozenset})
_TIMES = (datetime.date, datetime.time, datetime.timedelta)


class FoldByKey:
    """Shipped to the workers in place of the mapper: folds a batch's pairs per key.

    ``initial`` starts every key's fold (and travels pickled, like
    :class:`~fabric.calls.fold.Fold`'s): a mutable one (``[]``, ``Counter()``)
    is unpickled afresh for each new key, an immutable one (0, "") is shared.
    """

    __slots__ = ("mapper", "reducer", "initial", "partitions", "__weakref__")

    def __init__(self, mapper: Callable[[Any], Iterable[tuple[Any, Any]]], reducer: Reducer, initial: Any,
                 partitions: int) -> None:
        if not callable(reducer):
            raise TypeError(f"the reducer must be a function of two arguments, got {reducer!r:.80}")
        if type(partitions) is not int or not 1 <= partitions <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be an int from 1 to {MAX_PARTITIONS}, got {partitions!r:.80}")
        self.mapper = mapper
        self.reducer = reducer
        self.initial = None if initial is NO_INITIAL else pickled_initial(initial)
        self.partitions = partitions

    def __call__(self, items: Iterable[Any]) -> list[bytes]:
        folded: dict[Any, Any] = {}
        pairs = itertools.chain.from_iterable(map(self.mapper, items))
        if self.initial is None:
            _fold_first(folded, pairs, self.reducer)
        else:
            start = pickle.loads(self.initial)
            fresh = itertools.repeat(start).__next__ if type(start) in _IMMUTABLE else (
                functools.partial(pickle.loads, self.initial))
            _fold_from(folded, pairs, self.reducer, fresh)
        return [pickled_partial(part) for part in split(folded, self.partitions)]

    def __getstate__(self) -> tuple[Any, ...]:
        return self.mapper, self.reducer, self.initial, self.partitions

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.mapper, self.reducer, self.initial, self.partitions = state


def _fold_first(folded: dict[Any, Any], pairs: Iterable[tuple[Any, Any]], reducer: Reducer) -> None:
    """Fold ``pairs`` into ``folded``; a key's first value starts its fold (``functools.reduce``)."""
    get = folded.get
    key: Any = None
    try:
        if reducer is operator.add:  # the word count: the operator inline saves a call per pair
            for key, value in pairs:
                old = get(key, _MISSING)
                folded[key] = value if old is _MISSING else old + value
        else:
            for key, value in pairs:
                old = get(key, _MISSING)
                folded[key] = value if old is _MISSING else reducer(old, value)
    except TypeError as exc:
        _check_hashable(key, exc)
        raise


def _fold_from(folded: dict[Any, Any], pairs: Iterable[tuple[Any, Any]], reducer: Reducer,
               fresh: Callable[[], Any]) -> None:
    """Fold ``pairs`` into ``folded``; each new key's fold starts from ``fresh()``."""
    get = folded.get
    key: Any = None
    try:
        for key, value in pairs:
            old = get(key, _MISSING)
            folded[key] = reducer(fresh() if old is _MISSING else old, value)
    except TypeError as exc:
        _check_hashable(key, exc)
        raise


def _check_hashable(key: Any, exc: TypeError) -> None:
    """Turn a TypeError raised because ``key`` is unhashable into a CacheKeyError naming it."""
    try:
        hash(key)
    except TypeError:
        raise CacheKeyError(f"key {key!r:.80} is not hashable: a by-key reduction needs keys a dict can hold") from exc


def pickled_partial(part: dict[Any, Any]) -> bytes:
    """A partition's partial as one opaque blob (b"" when empty): the client (or the node that
    will own the partition) keeps or forwards it without decoding it, and decodes it once.
    Plain pickle is ~3x faster than cloudpickle; values of classes defined in the caller's
    script are not importable here, so those fall back to cloudpickle."""
    if not part:
        return b""
    try:
        return pickle.dumps(part, protocol=5)
    except Exception:  # noqa: BLE001 - anything plain pickle refuses, cloudpickle may take
        try:
            return cloudpickle.dumps(part, protocol=5)
        except Exception as exc:
            raise SerializationError(f"a partial of the by-key reduction cannot be serialized: {exc}") from exc


# -- partitions --------------------------------------------------------------------


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
