"""Futures for single tasks (``submit``), and the owner that resolves them.

A :class:`FutureGroup` owns the futures of one CALL batch.  The client's I/O
thread hands it the batch's outcome (decoded results, or a synthetic error when
the batch was lost), and it resolves each future; ``set_result`` then wakes
whichever user thread waits.  ``as_completed`` and ``wait`` are those of
:mod:`concurrent.futures`, which accept our subclass.

What a task printed rides on its future and is written by the first
``result()`` or ``exception()`` (:mod:`fabric.client.output`).  A
KeyboardInterrupt while one waits cancels that future, running or not, and
asks every fabric of the process to stop the work nobody waits for any more
(:func:`interrupted`).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import threading
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from ..errors import SerializationError
from ..wire import codec
from ..wire.ref import encoding_a_batch, failed_argument, value_of
from .batch import miscounted
from .output import Printed, show

__all__ = ["Future", "FutureGroup", "as_completed", "wait", "FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED"]

FIRST_COMPLETED = concurrent.futures.FIRST_COMPLETED
FIRST_EXCEPTION = concurrent.futures.FIRST_EXCEPTION
ALL_COMPLETED = concurrent.futures.ALL_COMPLETED


# A Condition of its own per future is seven objects the garbage collector tracks;
# with 50,000 futures pending, full collections took 80 % of submit time (W2).
# Futures share a few Conditions instead, and waits tolerate wake-ups meant for others.
CONDITION_STRIPES = 64
_DONE_STATES = frozenset({"CANCELLED", "CANCELLED_AND_NOTIFIED", "FINISHED"})


_next_condition: Callable[[], threading.Condition]
_markers = threading.local()  # .on: a failed future pickles as a marker the worker raises (map's inputs)


@contextmanager
def failed_as_markers() -> Iterator[None]:
    """Inside the block a failed future pickles as a marker the worker raises for its item."""
    _markers.on = True
    try:
        yield
    finally:
        _markers.on = False


class PendingArgument(BaseException):
    """Raised out of pickling by a future argument that is not done (or failed):
    the call waits for it instead of being sent.  A BaseException so that no
    ``except Exception`` on the way (the codec's fallbacks) takes it for an error."""

    def __init__(self, future: Future) -> None:
        super().__init__(future)
        self.future = future


def _new_stripes() -> None:
    global _next_condition
    _next_condition = itertools.cycle([threading.Condition() for _ in range(CONDITION_STRIPES)]).__next__


_new_stripes()
os.register_at_fork(after_in_child=_new_stripes)  # a lock held by another thread at fork stays held


class Interruptible(Protocol):
    def interrupted(self) -> None:
        """Drop the work nobody waits for any more and stop the workers running it."""


_interruptible: weakref.WeakSet[Interruptible] = weakref.WeakSet()  # the I/O loops of this process


def on_interrupt(loop: Interruptible) -> None:
    """Have ``loop`` told when a caller waiting on a future is interrupted."""
    _interruptible.add(loop)


def interrupted() -> None:
    """A KeyboardInterrupt reached a caller waiting for results: tell every fabric."""
    for loop in list(_interruptible):
        loop.interrupted()


class Future(concurrent.futures.Future):  # type: ignore[type-arg]
    """The outcome of one submitted task; a :class:`concurrent.futures.Future`.

    ``task`` names the submitted function, for messages and its repr.
    ``await fut`` waits without blocking the event loop (see
    :mod:`fabric.client.awaiting`).
    """

    _printed: Printed | None = None  # what the task printed, until shown (a class default: no cost per future)

    def __init__(self, task: str = "") -> None:
        # The fields of concurrent.futures.Future.__init__ (a test pins them), with a
        # shared Condition: building one only to drop it costs as much as keeping it.
        self._condition = _next_condition()
        self._state = "PENDING"
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []
        self.task = task

    def done(self) -> bool:
        # One attribute read needs no lock: the state only ever moves forward.
        return self._state in _DONE_STATES

    def running(self) -> bool:
        return self._state == "RUNNING"

    def result(self, timeout: float | None = None) -> Any:
        self._wait_done(timeout)
        return super().result(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait_done(timeout)
        return super().exception(0)

    def __reduce__(self) -> tuple[Any, ...]:
        """A future given as a task's argument travels as its result (see
        :mod:`fabric.client.dependencies`); pending, it cannot travel yet.
        Pickled anywhere else, a future refuses, as the stdlib's does."""
        if not encoding_a_batch():
            raise TypeError(f"cannot pickle {self!r}: pass it to submit/map as an argument, or pickle its result")
        if self._state == "FINISHED":
            if self._exception is None:
                return value_of, (self._result,)
            if getattr(_markers, "on", False):
                return failed_argument, (codec.error_record(-1, self._exception),)
        raise PendingArgument(self)

    def __await__(self) -> Generator[Any, None, Any]:
        import asyncio  # here: it costs the client's start-up ~30 ms, and most callers never await

        return asyncio.wrap_future(self).__await__()

    def __repr__(self) -> str:
        # concurrent.futures' "<Future at 0x... state=finished returned int>", naming the task
        return super().__repr__().replace("<Future", f"<fabric.Future {self.task}", 1)

    def _wait_done(self, timeout: float | None) -> None:
        """Wait until done or ``timeout`` (the shared Condition also wakes for other
        futures), then show what the task printed, once."""
        if self._state not in _DONE_STATES:
            try:
                with self._condition:
                    self._condition.wait_for(lambda: self._state in _DONE_STATES, timeout)
            except KeyboardInterrupt:
                abandon([self])
                raise
        printed = self._printed
        if printed is not None:
            self._printed = None
            show(printed)

    def _abandon(self) -> None:
        """Cancel, even while running: the caller gave up on it (ctrl-C)."""
        with self._condition:
            if self._state in _DONE_STATES:
                return
            self._state = "CANCELLED_AND_NOTIFIED"
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]  # concurrent.futures.Future's own


def abandon(futures: Iterable[concurrent.futures.Future]) -> None:
    """The caller gave up on these (ctrl-C while it waited): cancel them, running or
    not, and have the workers running them stopped, as for a map it was reading."""
    for future in futures:
        if isinstance(future, Future):
            future._abandon()
    interrupted()


def as_completed(fs: Iterable[concurrent.futures.Future], timeout: float | None = None) -> Iterator[Any]:
    """Yield futures as they finish (fabric's or any concurrent.futures ones)."""
    return concurrent.futures.as_completed(fs, timeout)


def wait(fs: Iterable[concurrent.futures.Future], timeout: float | None = None, return_when: str = ALL_COMPLETED):
    """Wait for futures; returns ``(done, not_done)`` sets, as concurrent.futures."""
    return concurrent.futures.wait(fs, timeout, return_when)


class FutureGroup:
    """Owner of a CALL batch: one future per item, in item order."""

    __slots__ = ("futures",)

    def __init__(self, futures: list[Future]) -> None:
        self.futures = futures

    def alive(self) -> bool:
        return not all(f.done() for f in self.futures)

    def claim(self) -> bool:
        """Start the futures still wanted; the batch is dropped if none is."""
        wanted = [f for f in self.futures if not f.done() and (f.running() or f.set_running_or_notify_cancel())]
        return bool(wanted)

    def slice(self, start: int, stop: int) -> FutureGroup:
        return FutureGroup(self.futures[start:stop])

    def merge(self, owners: list[Any]) -> FutureGroup:
        return FutureGroup([f for owner in owners for f in owner.futures])

    def deliver(self, batch: Any, codec_id: int, payload: list[Any], errors: list[codec.ErrorRecord]) -> None:
        try:
            results = codec.decode(codec_id, payload)
        except SerializationError as exc:
            self.fail(batch, exc)
            return
        failed = {}
        for record in errors:
            if record[0] < 0:  # the whole batch failed
                self.fail(batch, codec.rebuild_error(record))
                return
            failed[record[0]] = record
        wrong = miscounted(results, len(self.futures))
        if wrong is not None:  # a lying or broken worker: fail the calls, not the I/O thread
            self.fail(batch, wrong)
            return
        printed = batch.printed.by_task() if batch.printed is not None else None
        for index, future in enumerate(self.futures):
            if future.done():
                continue
            if printed is not None:
                future._printed = printed.get(index)
            failure = failed.get(index)
            if failure is None:
                future.set_result(results[index])
            else:
                future.set_exception(codec.rebuild_error(failure))

    def describe(self, batch: Any) -> str:
        names = sorted({f.task for f in self.futures})
        return f"task {', '.join(names)}" + (f" ({len(self.futures)} calls)" if len(self.futures) > 1 else "")

    def cancel(self, batch: Any) -> None:
        for future in self.futures:
            future.cancel()

    def fail(self, batch: Any, exc: BaseException) -> None:
        for future in self.futures:
            if not future.done():
                future.set_exception(exc)
