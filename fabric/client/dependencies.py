"""Futures as arguments: a call whose arguments hold fabric futures waits for them.

The client owns every future it made, so it resolves dependencies itself, with
no scheduler::

    submit(g, f1) ── pickling meets f1 pending ─► PendingArgument ─► when_done([f1], resume)
    f1 resolved (I/O thread) ─► resume: f1 failed ─► g's future fails with f1's exception, unrun
                                       f1 done   ─► g pickled again, f1 as its result (a Ref when
                                                    f1 kept it: g then runs where that object is)
    map(g, [f1, f2]) ── a chunk holding f1 pending is sent once its futures are done, from the
                        thread that finishes the last; a failed one travels as a marker, and its
                        item raises, unrun (the map's later chunks go meanwhile)

Nothing here runs for calls without futures: a future is found by pickling
(``Future.__reduce__`` raises when it is not done), never by inspecting
arguments, so plain arguments cost nothing more.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .futures import Future, failed_as_markers

__all__ = ["failed_as_markers", "failure_of", "futures_in", "when_done"]

MAX_DEPTH = 8  # containers searched for futures, nested


def futures_in(value: Any, depth: int = 0) -> list[Future]:
    """The fabric futures in ``value`` (inside lists, tuples, sets and dicts)."""
    if isinstance(value, Future):
        return [value]
    if depth >= MAX_DEPTH:
        return []
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [f for item in value for f in futures_in(item, depth + 1)]
    return []


def failure_of(future: concurrent.futures.Future) -> BaseException | None:
    if future.cancelled():
        return concurrent.futures.CancelledError(f"an argument of this call was cancelled: {future!r}")
    return future.exception()


def when_done(futures: Sequence[concurrent.futures.Future], then: Callable[[BaseException | None], None]) -> None:
    """Call ``then(first failure or None)`` once every future is done (in the
    thread that finishes the last one, or here if all are done already)."""
    remaining = [len(futures)]
    lock = threading.Lock()

    def one_done(_: concurrent.futures.Future) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            then(next((exc for exc in map(failure_of, futures) if exc is not None), None))

    if not futures:
        then(None)
    for future in futures:
        future.add_done_callback(one_done)
