"""``map_reduce(..., combine=...)``: each batch is folded on the worker that ran it.

Without ``combine`` every mapper result travels to the client, which folds them
all; for a word count that is one ``Counter`` per line to unpickle and merge,
as much work as counting the line, so the client's single thread bounds the
whole reduction.  With it, the reduction is split as MapReduce's combiner and
Dask's ``Bag.fold(binop, combine)`` split it::

    worker, per batch:  partial = reduce(reducer, map(mapper, items), fresh copy of initial)
    client:             result  = reduce(combine, partials, initial)

The batch machinery is the map's (Mode.FOLD): batches are sized by measured
work per item, pulled by credits, split and re-run when a worker dies; a batch
returns one value instead of a list.  A batch lost with its worker and re-run
in halves returns two partials, which the client combines like any others.
The worker's side, :class:`~fabric.calls.fold.Fold`, lives in :mod:`fabric.calls.fold`.

With ``by_key=True`` (Spark's ``reduceByKey``, Dask's ``Bag.foldby``) a batch's
partial is one pickled dict per partition (:class:`~fabric.calls.by_key.FoldByKey`),
and the client merges each into the result with :func:`merge_by_key`: a key seen
before is combined, a new one is adopted, both in C-level loops.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Iterable
from typing import Any

from ..calls.fold import NO_INITIAL, Reducer


def combiner(reducer: Reducer, combine: Reducer | bool) -> Reducer:
    """What folds the partials in the client: ``combine``, or the reducer for ``True``."""
    if combine is True:
        return reducer
    if not callable(combine):
        raise TypeError(f"combine must be True or a function of two partial results, got {combine!r:.80}")
    return combine


def fold(merge: Reducer, partials: Iterable[Any], initial: Any) -> Any:
    """``reduce(merge, partials[, initial])``, as ``functools.reduce`` with an optional start."""
    if initial is NO_INITIAL:
        return functools.reduce(merge, partials)
    return functools.reduce(merge, partials, initial)


def merge_by_key(total: dict[Any, Any], partial: dict[Any, Any], merge: Reducer, ordered: bool) -> dict[Any, Any]:
    """Fold the per-key ``partial`` into ``total`` and return the result (either dict, reused).

    Only the keys both hold call ``merge``; the rest are copied by ``dict.update``.
    Unless ``ordered``, the smaller dict is merged into the larger (``merge`` is
    then taken to commute, as Spark's ``reduceByKey`` requires).
    """
    if not ordered and len(partial) > len(total):
        total, partial = partial, total
    common = list(partial.keys() & total.keys()) if total else []
    if common:
        partial.update(zip(common, list(map(merge, map(total.__getitem__, common), map(partial.__getitem__, common)))))
    total.update(partial)
    return total


def merge_partitions(partials: Iterable[list[bytes]], merge: Reducer, ordered: bool) -> dict[Any, Any]:
    """One dict from the batches' partials, each a list of pickled per-partition dicts (b"" for none)."""
    total: dict[Any, Any] = {}
    for parts in partials:
        for part in parts:
            if part:
                total = merge_by_key(total, pickle.loads(part), merge, ordered)
    return total
