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

With ``by_key=True`` (Spark's ``reduceByKey``, Dask's ``Bag.foldby``) the
partials stay on the nodes and are merged there, partition by partition
(:mod:`fabric.client.shuffle`).
"""

from __future__ import annotations

import functools
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
