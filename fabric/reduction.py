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
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle

from .errors import SerializationError

NO_INITIAL: Any = object()
Reducer = Callable[[Any, Any], Any]


class Fold:
    """Shipped to the workers in place of the mapper: folds one batch's items.

    ``initial`` travels pickled and is unpickled for every batch, so a reducer
    that updates its accumulator in place (``Counter.update``) starts afresh
    each time; it must be an identity of the reduction (0, [], ``Counter()``),
    since it starts every batch's fold and the client's.
    """

    __slots__ = ("mapper", "reducer", "initial", "__weakref__")

    def __init__(self, mapper: Callable[[Any], Any], reducer: Reducer, initial: Any) -> None:
        if not callable(reducer):
            raise TypeError(f"the reducer must be a function of two arguments, got {reducer!r:.80}")
        self.mapper = mapper
        self.reducer = reducer
        self.initial = None if initial is NO_INITIAL else _pickled(initial)

    def __call__(self, items: Iterable[Any]) -> Any:
        results = map(self.mapper, items)
        if self.initial is None:
            return functools.reduce(self.reducer, results)
        return functools.reduce(self.reducer, results, pickle.loads(self.initial))

    def __getstate__(self) -> tuple[Any, ...]:
        return self.mapper, self.reducer, self.initial

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.mapper, self.reducer, self.initial = state


def _pickled(initial: Any) -> bytes:
    try:
        return cloudpickle.dumps(initial, protocol=5)
    except Exception as exc:
        raise SerializationError(f"initial value {initial!r:.80} cannot be serialized: {exc}") from exc


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
