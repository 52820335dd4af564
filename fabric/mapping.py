"""Map streams: one ``map`` call, fed lazily and read back in order or as done.

The thread that iterates the map does the per-item work in C-level loops::

    input --islice--> chunk (list) --encode--> Batch --post--> I/O thread --> workers
    caller <--chain.from_iterable-- decoded result lists <-- deliver() <-- I/O thread (sink)

No Python object of ours is made per item: chunks are lists, results are the
workers' lists, and ``itertools.chain`` flattens them.  At most ``window``
chunks are in flight or unread, so a map over an endless generator read slowly
keeps memory flat; work starts at the ``map`` call (the first window) and each
chunk read makes room for the next, like ``Executor.map(buffersize=...)``.

A chunk lost with a worker comes back in parts (the ventilator splits lost
batches), so a chunk is complete when its parts cover all its items.  The first
failure (a task's exception, an input that cannot be encoded, an input
iterator that raised) is raised at its position, after the results before it.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from . import codec
from .batching import BatchSizer
from .errors import SerializationError
from .protocol import Mode
from .ventilator import Batch, next_batch_id

MIN_WINDOW = 4  # chunks in flight or unread per stream, before workers are known
WINDOW_PER_CREDIT = 2


@dataclass(slots=True)
class Part:
    """Outcome of one batch: encoded results, or an exception for all its items."""

    offset: int
    n_items: int
    codec_id: int = codec.PICKLE
    payload: list[Any] | None = None
    errors: list[codec.ErrorRecord] | None = None
    exc: BaseException | None = None


class MapStream:
    """State of one map call, shared by the iterating thread and the I/O thread."""

    def __init__(
        self,
        fn_info: tuple[bytes, bytes],
        mode: Mode,
        items: Iterator[Any],
        *,
        post: Callable[[Batch], None],
        capacity: Callable[[], int],
        sizer: BatchSizer,
        ordered: bool,
        deadline: float | None,
        retries: int | None = None,
        check_size: Callable[[list[Any], str], None] | None = None,
    ) -> None:
        self._digest, self._fn_payload = fn_info
        self._mode = mode
        self._items = items
        self._post = post
        self._capacity = capacity
        self.sizer = sizer
        self._ordered = ordered
        self._deadline = deadline
        self._retries = retries
        self._check_size = check_size
        self._encoder = codec.PayloadEncoder()
        self._cond = threading.Condition()
        self._lengths: dict[int, int] = {}  # chunk seq -> items
        self._starts: dict[int, int] = {}  # chunk seq -> index of its first item in the input
        self._filled: dict[int, int] = {}
        self._parts: dict[int, list[Part]] = {}
        self._complete: deque[int] = deque()  # unordered only: seqs in completion order
        self._posted = 0  # chunks
        self._items_posted = 0
        self._yielded = 0  # chunks
        self._exhausted = False
        self._input_error: BaseException | None = None
        self._closed = False

    # -- I/O thread side -----------------------------------------------------------

    def alive(self) -> bool:
        return not self._closed

    claim = alive

    def slice(self, start: int, stop: int) -> MapStream:
        return self

    def merge(self, owners: list[Any]) -> MapStream:
        raise TypeError("map chunks are never merged")

    def deliver(self, batch: Batch, codec_id: int, payload: list[Any], errors: list[codec.ErrorRecord]) -> None:
        self._add(batch.seq, Part(batch.offset, batch.n_items, codec_id, payload, errors))

    def fail(self, batch: Batch, exc: BaseException) -> None:
        self._add(batch.seq, Part(batch.offset, batch.n_items, exc=exc))

    def describe(self, batch: Batch) -> str:
        start = self._starts.get(batch.seq)
        where = f"item {start + batch.offset}" if start is not None else "an item"
        return f"map {where}" + (f" (and the {batch.n_items - 1} after it)" if batch.n_items > 1 else "")

    def cancel(self, batch: Batch) -> None:
        self.fail(batch, concurrent.futures.CancelledError("the map was cancelled by shutdown(cancel_futures=True)"))

    def _add(self, seq: int, part: Part) -> None:
        with self._cond:
            if self._closed or seq not in self._lengths:
                return
            self._parts.setdefault(seq, []).append(part)
            self._filled[seq] = self._filled.get(seq, 0) + part.n_items
            if self._filled[seq] >= self._lengths[seq]:
                if not self._ordered:
                    self._complete.append(seq)
                self._cond.notify()

    # -- iterating thread side -------------------------------------------------------

    def results(self) -> Iterator[Any]:
        """The flat result iterator handed to the caller."""
        return itertools.chain.from_iterable(self._chunks())

    def start(self) -> None:
        """Post the first window of chunks, so work begins at the map call."""
        self._fill()

    def _chunks(self) -> Iterator[list[Any]]:
        try:
            while True:
                self._fill()
                if self._yielded == self._posted and self._exhausted:
                    if self._input_error is not None:
                        raise self._input_error
                    return
                results, error = self._assemble(self._wait_chunk())
                self._yielded += 1
                if error is not None:
                    yield results[: error[0]]
                    raise error[1]
                yield results
        finally:
            self.close()

    def close(self) -> None:
        """Stop: queued chunks are skipped, late results dropped."""
        with self._cond:
            self._closed = True
            self._parts.clear()

    def _window(self) -> int:
        return max(MIN_WINDOW, WINDOW_PER_CREDIT * self._capacity())

    def _fill(self) -> None:
        while not self._exhausted and self._posted - self._yielded < self._window():
            size = self.sizer.next_size()
            chunk: list[Any] = []
            try:
                chunk.extend(itertools.islice(self._items, size))
            except Exception as exc:  # the caller's iterator failed: raise it at its position
                self._input_error = exc
                self._exhausted = True
            if len(chunk) < size:
                self._exhausted = True
            if chunk:
                self._post_chunk(chunk)

    def _post_chunk(self, chunk: list[Any]) -> None:
        try:
            codec_id, payload = self._encoder.encode(chunk)
        except SerializationError:
            self._post_unencodable(chunk)
            return
        index = self._items_posted
        seq = self._new_seq(len(chunk))
        if self._check_size is not None:
            try:
                self._check_size(payload, f"map input items {index}..{index + len(chunk) - 1}")
            except SerializationError as exc:
                self._add(seq, Part(0, len(chunk), exc=exc))
                self._exhausted = True
                return
        self._post(
            Batch(
                next_batch_id(), self._digest, self._fn_payload, self._mode, codec_id, [len(payload)], payload,
                len(chunk), self, seq=seq, sizer=self.sizer, retries=self._retries,
            )
        )

    def _post_unencodable(self, chunk: list[Any]) -> None:
        """Send the items before the first unencodable one; fail the map there."""
        bad = next(i for i, item in enumerate(chunk) if not _encodes(item))
        if bad:
            self._post_chunk(chunk[:bad])
        index = self._items_posted
        seq = self._new_seq(len(chunk) - bad)
        try:
            codec.pickle_frames(chunk[bad])
        except SerializationError as exc:
            error = SerializationError(f"map input item {index}: {exc}")
            self._add(seq, Part(0, len(chunk) - bad, exc=error))
        self._exhausted = True

    def _new_seq(self, n_items: int) -> int:
        seq = self._posted
        with self._cond:
            self._lengths[seq] = n_items
            self._starts[seq] = self._items_posted
        self._posted += 1
        self._items_posted += n_items
        return seq

    def _wait_chunk(self) -> tuple[int, list[Part]]:
        with self._cond:
            while True:
                seq = self._ready_seq()
                if seq is not None:
                    self._filled.pop(seq)
                    del self._lengths[seq]
                    del self._starts[seq]
                    return seq, self._parts.pop(seq)
                if self._deadline is None:
                    self._cond.wait()
                else:
                    remaining = self._deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError("map result not ready before its timeout")
                    self._cond.wait(remaining)

    def _ready_seq(self) -> int | None:
        if not self._ordered:
            return self._complete.popleft() if self._complete else None
        seq = self._yielded
        length = self._lengths.get(seq)
        return seq if length is not None and self._filled.get(seq, 0) >= length else None

    def _assemble(self, chunk: tuple[int, list[Part]]) -> tuple[list[Any], tuple[int, BaseException] | None]:
        """Results of a chunk in item order, and its first error with its index."""
        _, parts = chunk
        if len(parts) > 1:
            parts.sort(key=lambda p: p.offset)
        results: list[Any] = []
        first_error: tuple[int, BaseException] | None = None
        for part in parts:
            error = _part_error(part, results)
            if error is not None and (first_error is None or error[0] < first_error[0]):
                first_error = error
        return results, first_error


def _part_error(part: Part, results: list[Any]) -> tuple[int, BaseException] | None:
    """Append the part's results; return its first error as (chunk index, exception)."""
    if part.exc is not None:
        results.extend(itertools.repeat(None, part.n_items))
        return part.offset, part.exc
    try:
        values = codec.decode(part.codec_id, part.payload or [])
    except SerializationError as exc:
        results.extend(itertools.repeat(None, part.n_items))
        return part.offset, exc
    if isinstance(values, list) and len(values) == part.n_items:
        results.extend(values)
    else:  # a batch-level failure carries no per-item results
        results.extend(itertools.repeat(None, part.n_items))
    if not part.errors:
        return None
    record = min(part.errors, key=lambda e: e[0])
    return part.offset + max(0, record[0]), codec.rebuild_error(record)


def _encodes(item: Any) -> bool:
    try:
        codec.pickle_frames(item)
    except SerializationError:
        return False
    return True


def sized_length(iterables: Iterable[Any]) -> int | None:
    """The number of items a map will see, when every input knows its length."""
    lengths = []
    for iterable in iterables:
        try:
            lengths.append(len(iterable))
        except TypeError:
            return None
    return min(lengths) if lengths else None
