"""The workers' side of ``map_reduce(..., by_key=True)``: the map fold and the partition merge.

::

    map batch (Mode.FOLD), FoldByKey:
        items --mapper--> (key, value) pairs --fold per key--> {key: partial}
              --partition_of(key)--> P dicts --keep each non-empty one--> [Ref | None] * P   (one result)
                                             (one node: --pickle each--> [bytes] * P, merged by the client)
    reduce task of partition p, PartitionMerge, on p's owner node:
        the partition's partials (Refs, read from this node's store or fetched from their holders)
              --merge_by_key, in input order--> one dict --(node id, pickled), or kept (a Ref)--> the client

The mapper's pairs never leave the worker, and a batch's partials stay in its
node's object store: only Refs (a few dozen bytes each) reach the client.  A
key lives in one partition on every worker (:mod:`fabric.calls.key_hash`), so
the partitions are merged apart from each other, each where the ring puts it
(the shuffle of MapReduce, Spark's ``reduceByKey``).
"""

from __future__ import annotations

import functools
import itertools
import operator
import pickle
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle

from ..errors import CacheKeyError, SerializationError
from .fold import NO_INITIAL, Reducer, pickled_initial
from .key_hash import split

MAX_PARTITIONS = 1 << 16  # every batch returns one entry per partition, empty or not
_MISSING: Any = object()
_IMMUTABLE = frozenset({int, float, complex, bool, str, bytes, type(None), frozenset})


class FoldByKey:
    """Shipped to the workers in place of the mapper: folds a batch's pairs per key
    and leaves each partition's partial in the node's object store.

    ``initial`` starts every key's fold (and travels pickled, like
    :class:`~fabric.calls.fold.Fold`'s): a mutable one (``[]``, ``Counter()``)
    is unpickled afresh for each new key, an immutable one (0, "") is shared.
    """

    __slots__ = ("mapper", "reducer", "initial", "partitions", "on_nodes", "__weakref__")

    def __init__(self, mapper: Callable[[Any], Iterable[tuple[Any, Any]]], reducer: Reducer, initial: Any,
                 partitions: int, on_nodes: bool = True) -> None:
        if not callable(reducer):
            raise TypeError(f"the reducer must be a function of two arguments, got {reducer!r:.80}")
        if type(partitions) is not int or not 1 <= partitions <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be an int from 1 to {MAX_PARTITIONS}, got {partitions!r:.80}")
        self.mapper = mapper
        self.reducer = reducer
        self.initial = None if initial is NO_INITIAL else pickled_initial(initial)
        self.partitions = partitions
        self.on_nodes = on_nodes  # False: the client merges (one node), so each partial travels pickled

    def __call__(self, items: Iterable[Any]) -> list[Any]:
        """The batch's partials: kept on this node (a Ref per non-empty partition, None for the
        rest), or pickled for the client (b"" for an empty partition)."""
        parts = self.fold(items)
        if not self.on_nodes:
            return [pickled_partial(part) if part else b"" for part in parts]
        from ..node import worker_objects  # only ever called in a worker

        return [worker_objects.keep(part) if part else None for part in parts]

    def fold(self, items: Iterable[Any]) -> list[dict[Any, Any]]:
        """The batch's pairs folded per key, one dict per partition."""
        folded: dict[Any, Any] = {}
        pairs = itertools.chain.from_iterable(map(self.mapper, items))
        if self.initial is None:
            _fold_first(folded, pairs, self.reducer)
        else:
            start = pickle.loads(self.initial)
            fresh = itertools.repeat(start).__next__ if type(start) in _IMMUTABLE else (
                functools.partial(pickle.loads, self.initial))
            _fold_from(folded, pairs, self.reducer, fresh)
        return split(folded, self.partitions)

    def __getstate__(self) -> tuple[Any, ...]:
        return self.mapper, self.reducer, self.initial, self.partitions, self.on_nodes

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.mapper, self.reducer, self.initial, self.partitions, self.on_nodes = state


class PartitionMerge:
    """The reduce task of one partition: its partials, in input order, folded into one dict.

    Returned pickled (plain pickle unpickles a dict of short strings ~2x
    faster than msgpack in the client, which the result codec would choose),
    or, with ``keep``, left in this node's object store and returned as a Ref.
    """

    __slots__ = ("merge", "ordered", "keep")

    def __init__(self, merge: Reducer, ordered: bool, keep: bool) -> None:
        self.merge = merge
        self.ordered = ordered
        self.keep = keep

    def __call__(self, *partials: dict[Any, Any]) -> Any:
        from ..node import worker_objects  # only ever called in a worker

        total: dict[Any, Any] = {}
        for partial in partials:
            total = merge_by_key(total, partial, self.merge, self.ordered)
        return worker_objects.keep(total) if self.keep else pickled_partial(total)

    def __getstate__(self) -> tuple[Any, ...]:
        return self.merge, self.ordered, self.keep

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.merge, self.ordered, self.keep = state


def merge_by_key(total: dict[Any, Any], partial: dict[Any, Any], merge: Reducer, ordered: bool) -> dict[Any, Any]:
    """Fold the per-key ``partial`` into ``total`` and return the result (either dict, reused).

    Only the keys both hold call ``merge``; the rest are copied by ``dict.update``.
    Unless ``ordered``, the smaller dict is merged into the larger (``merge`` is
    then taken to commute, as Spark's ``reduceByKey`` requires).  A partial is
    read by one merge only, so reusing it costs no other reader anything.
    """
    if not ordered and len(partial) > len(total):
        total, partial = partial, total
    common = list(partial.keys() & total.keys()) if total else []
    if common:
        partial.update(zip(common, list(map(merge, map(total.__getitem__, common), map(partial.__getitem__, common)))))
    total.update(partial)
    return total


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
    """A partial or a merged partition as one blob for the client to unpickle.  Plain pickle is
    ~3x faster than cloudpickle; values of classes defined in the caller's script
    are not importable here, so those fall back to cloudpickle."""
    try:
        return pickle.dumps(part, protocol=5)
    except Exception:  # noqa: BLE001 - anything plain pickle refuses, cloudpickle may take
        try:
            return cloudpickle.dumps(part, protocol=5)
        except Exception as exc:
            raise SerializationError(f"a partition of the by-key reduction cannot be serialized: {exc}") from exc
