"""``await fut`` and ``async for x in fx.map(...)``: waiting on fabric without blocking an event loop.

Both work in any asyncio loop, and so with top-level ``await`` in a Jupyter
cell.  Neither adds anything to the synchronous paths:

- ``await fut``: :class:`~fabric.Future` wraps itself with
  ``asyncio.wrap_future``, whose done callback (run by the client's I/O
  thread) resolves an asyncio future through ``loop.call_soon_threadsafe``.
- ``async for``: the iterator ``map`` returns is a :class:`MapResults`, an
  ``itertools.chain`` over the decoded chunks, so ``for`` and ``list()`` still
  run at C speed.  Asynchronously, items of the chunk in hand are returned at
  once; before a step that would take the next chunk, the event loop awaits
  it: the map stream calls a waker from the I/O thread when a chunk is
  complete, which sets an asyncio future with ``call_soon_threadsafe``::

      I/O thread: MapStream._add ─► waker ─► loop.call_soon_threadsafe(set woken)
      event loop: await woken ─► next(chain), which now finds its chunk ready

Iterate one map either way, not both: the chunk in hand is counted by the
asynchronous side only.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

if TYPE_CHECKING:
    import asyncio

__all__ = ["MapResults", "ChunkSource"]

T = TypeVar("T")


class ChunkSource(Protocol):
    """What async iteration needs of a map stream (:class:`~fabric.client.mapping.MapStream`)."""

    last_taken: int  # results in the chunk taken last

    def chunks(self) -> Iterator[Iterable[Any]]: ...

    def taken(self) -> int: ...

    def wake_when_ready(self, waker: Callable[[], None]) -> bool: ...

    def time_left(self) -> float | None: ...


class MapResults(itertools.chain[T]):  # type: ignore[misc]
    """What ``fx.map(...)`` returns: an iterator of the results that is also an
    asynchronous iterator, whose ``__anext__`` never blocks the event loop."""

    __slots__ = ("_stream", "_left", "_seen")

    _stream: ChunkSource
    _left: int  # results left in the chunk in hand, as the asynchronous side counted them
    _seen: int  # chunks taken when it last counted

    @classmethod
    def of(cls, stream: ChunkSource) -> MapResults[Any]:
        results = cast("MapResults[Any]", cls.from_iterable(stream.chunks()))  # the subclass, as typeshed cannot say
        results._stream, results._left, results._seen = stream, 0, 0
        return results

    def __aiter__(self) -> MapResults[T]:
        return self

    async def __anext__(self) -> T:
        stream = self._stream
        if self._left <= 0 or stream.taken() != self._seen:  # the next step may take a chunk: await it first
            await _chunk_ready(stream)
        before = stream.taken()
        try:
            value = next(self)
        except StopIteration:
            raise StopAsyncIteration from None
        self._seen = stream.taken()
        self._left = stream.last_taken - 1 if self._seen != before else self._left - 1
        return value


async def _chunk_ready(stream: ChunkSource) -> None:
    """Return once taking the stream's next chunk would not wait (its deadline passed counts)."""
    import asyncio

    loop = asyncio.get_running_loop()
    while True:
        woken = loop.create_future()
        if stream.wake_when_ready(functools.partial(_wake_from_thread, loop, woken)):
            return
        await asyncio.wait({woken}, timeout=stream.time_left())
        woken.cancel()  # if the deadline passed first; the stream then says it is ready


def _wake_from_thread(loop: asyncio.AbstractEventLoop, woken: asyncio.Future[None]) -> None:
    try:
        loop.call_soon_threadsafe(_set, woken)
    except RuntimeError:  # the loop has closed: nobody waits any more
        pass


def _set(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)
