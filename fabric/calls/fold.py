"""Fold: shipped to the workers in place of a mapper, folds one batch's items.

Built by ``map_reduce(..., combine=...)`` in the client and run on a worker
once per batch (Mode.FOLD), so one partial result per batch travels back.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle

from ..errors import SerializationError

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
        self.initial = None if initial is NO_INITIAL else pickled_initial(initial)

    def __call__(self, items: Iterable[Any]) -> Any:
        results = map(self.mapper, items)
        if self.initial is None:
            return functools.reduce(self.reducer, results)
        return functools.reduce(self.reducer, results, pickle.loads(self.initial))

    def __getstate__(self) -> tuple[Any, ...]:
        return self.mapper, self.reducer, self.initial

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.mapper, self.reducer, self.initial = state


def pickled_initial(initial: Any) -> bytes:
    try:
        return cloudpickle.dumps(initial, protocol=5)
    except Exception as exc:
        raise SerializationError(f"initial value {initial!r:.80} cannot be serialized: {exc}") from exc
