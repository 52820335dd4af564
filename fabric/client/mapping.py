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

A stream of Mode.FOLD (``map_reduce(..., combine=...)``, see
:mod:`fabric.client.reduction`) yields one partial result per part instead of one
result per item, in input order when ordered.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import pickle
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CacheKeyError, SerializationError
from ..wire import codec
from ..wire.protocol import Mode
from ..wire.ref import start_collecting, stop_collecting
from .awaiting import MapResults
from .batch import Batch, miscounted, next_batch_id
from .batching import BatchSizer
from .dependencies import failed_as_markers, futures_in, when_done
from .futures import PendingArgument
from .objects import free_unread
from .output import Printed, show_at

if TYPE_CHECKING:
    from .cache import CachedFunction
    from .placing import Placing
    from .progress import Bar

_SMALL_ATOMS = frozenset({int, float, bool, type(None), str, bytes, complex})
SMALL_RESULT_BYTES = 64  # per item, on the wire: below it a chunk's results are kept until it is used up
MIN_WINDOW = 4  # chunks in flight or unread per stream, before workers are known
CACHE_HIT_S = 1e-6  # what an all-hit chunk tells the batch sizer each item cost
WINDOW_PER_CREDIT = 2


@dataclass(slots=True)
class Part:
    """Outcome of some items of a chunk: encoded results (one payload, or one
    pickle per item for cache hits), or an exception for all of them.  The
    items are ``offset..offset+n_items`` of the chunk, or ``indices``."""

    offset: int
    n_items: int
    codec_id: int = codec.PICKLE
    payload: list[Any] | None = None
    errors: list[codec.ErrorRecord] | None = None
    exc: BaseException | None = None
    indices: list[int] | None = None
    blobs: list[bytes] | None = None
    printed: Printed | None = None  # what its tasks printed

    def positions(self) -> Sequence[int]:
        return self.indices if self.indices is not None else range(self.offset, self.offset + self.n_items)

    def free_unread(self) -> None:
        """Dropped unread: free what its worker kept (see objects.free_unread)."""
        if self.payload:
            free_unread(self.codec_id, self.payload)

    def decode(self, n_values: int | None = None) -> tuple[list[Any], tuple[int, BaseException] | None]:
        """The part's values (one per item, or ``n_values``) and its first error as
        (index within the part, exception)."""
        n_values = self.n_items if n_values is None else n_values
        if self.exc is not None:
            return [None] * n_values, (0, self.exc)
        try:
            if self.blobs is not None:
                return [pickle.loads(b) for b in self.blobs], None
            values = codec.decode(self.codec_id, self.payload or [])
        except SerializationError as exc:
            return [None] * n_values, (0, exc)
        errors = self.errors or []
        wrong = miscounted(values, n_values)
        if wrong is not None:
            if not any(record[0] < 0 for record in errors):  # a batch-level failure carries no per-item results
                return [None] * n_values, (0, wrong)
            values = [None] * n_values
        if not errors:
            return values, None
        record = min(errors, key=lambda e: e[0])
        return values, (max(0, record[0]), codec.rebuild_error(record))


class MapStream:
    """State of one map call, shared by the iterating thread and the I/O thread."""

    def __init__(
        self,
        fn_info: tuple[bytes, bytes],
        mode: Mode,
        items: Iterator[Any] | Sequence[Any],
        *,
        post: Callable[[Batch], None],
        capacity: Callable[[], int],
        sizer: BatchSizer,
        ordered: bool,
        deadline: float | None,
        retries: int | None = None,
        check_size: Callable[[list[Any], str], None] | None = None,
        cache: CachedFunction | None = None,
        locate: Callable[[list[Any], bytes], dict[bytes, int] | None] | None = None,
        recomputing: Callable[[list[Any]], list[concurrent.futures.Future]] | None = None,
        kept: Callable[[Sequence[Any], list[Any]], None] | None = None,
        placing: Placing | None = None,
        keys_of: Callable[[Sequence[Any]], list[bytes]] | None = None,
        bar: Bar | None = None,
        interrupted: Callable[[], None] | None = None,
        keepalive: object = None,
    ) -> None:
        self._digest, self._fn_payload = fn_info
        self._mode = mode
        self._items = items
        self._sliced = not isinstance(items, Iterator)  # see sliced_input
        self._post = post
        self._capacity = capacity
        self.sizer = sizer
        self._ordered = ordered
        self._deadline = deadline
        self._retries = retries
        self._check_size = check_size
        self._cache = cache
        self._locate = locate
        self._recomputing = recomputing  # lost kept results a chunk reads, computed again before it is sent
        # keep=True, by_key=True: told each result with what made it (an item; a fold's items), so a lost Ref
        # can be computed again
        self._kept = kept
        self._inputs: dict[int, Sequence[Any]] = {}  # seq -> its items, while ``kept`` needs them
        self._placing = placing  # where its batches may run (None: anywhere, the default path)
        self._keys_of = keys_of  # map(partition_by=): each item's key digest
        self._interrupted = interrupted  # a KeyboardInterrupt stops this map's running tasks
        self._keepalive = keepalive  # the fabric's pipeline: an unfinished map keeps its fabric open
        self._to_store: dict[int, tuple[list[int], list[bytes]]] = {}  # seq -> (positions, keys) of misses
        self._repeats: dict[int, dict[int, int]] = {}  # seq -> {position: position of the same key computed}
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
        self._bar = bar  # moved once per chunk taken (see fabric.client.progress)
        self.last_taken = 0  # results in the chunk taken last: async iteration knows when the next may block
        self._waker: Callable[[], None] | None = None  # wake_when_ready's, called once by the next arrival
        self._failing = False

    # -- I/O thread side -----------------------------------------------------------

    def alive(self) -> bool:
        return not self._closed

    claim = alive

    def slice(self, start: int, stop: int) -> MapStream:
        return self

    def merge(self, owners: list[Any]) -> MapStream:
        raise TypeError("map chunks are never merged")

    def deliver(self, batch: Batch, codec_id: int, payload: list[Any], errors: list[codec.ErrorRecord]) -> None:
        self._add(batch.seq, Part(batch.offset, batch.n_items, codec_id, payload, errors, indices=batch.indices,
                                  printed=batch.printed))

    def fail(self, batch: Batch, exc: BaseException) -> None:
        self._add(batch.seq, Part(batch.offset, batch.n_items, exc=exc, indices=batch.indices))

    def describe(self, batch: Batch) -> str:
        start = self._starts.get(batch.seq)
        where = f"item {start + batch.offset}" if start is not None else "an item"
        return f"map {where}" + (f" (and the {batch.n_items - 1} after it)" if batch.n_items > 1 else "")

    def cancel(self, batch: Batch) -> None:
        self.fail(batch, concurrent.futures.CancelledError("the map was cancelled by shutdown(cancel_futures=True)"))

    def _add(self, seq: int, part: Part) -> None:
        with self._cond:
            if self._closed or seq not in self._lengths:
                part.free_unread()
                return
            self._parts.setdefault(seq, []).append(part)
            self._filled[seq] = self._filled.get(seq, 0) + part.n_items
            if self._filled[seq] >= self._lengths[seq]:
                if not self._ordered:
                    self._complete.append(seq)
                self._cond.notify()
                if self._waker is not None:  # an async iteration awaits a chunk
                    self._wake()

    # -- iterating thread side -------------------------------------------------------

    def results(self) -> MapResults[Any]:
        """The flat result iterator handed to the caller (also an async iterator)."""
        return MapResults.of(self)

    def start(self) -> None:
        """Post the first window of chunks, so work begins at the map call."""
        try:
            self._fill()
        except KeyboardInterrupt:  # ctrl-C in the map call itself: its first tasks may be running
            self._interrupt()
            raise

    def chunks(self) -> Iterator[Iterable[Any]]:
        """Each chunk's results in turn, as the caller takes them."""
        try:
            while True:
                self._fill()
                if self._yielded == self._posted and self._exhausted:
                    if self._input_error is not None:
                        raise self._input_error
                    return
                seq, length, parts = self._wait_chunk()
                printed = [(part.positions(), part.printed) for part in parts if part.printed is not None]
                if printed:
                    show_at(printed)
                started = time.perf_counter()
                if self._mode == Mode.FOLD:
                    results, error = _partials(parts)
                else:
                    repeats = self._repeats.pop(seq, {})
                    results, error = _assemble(length + len(repeats), parts)
                    for position, source in repeats.items():
                        results[position] = results[source]
                if self._kept is not None:
                    inputs = self._inputs.pop(seq, ())
                    self._kept(_fold_inputs(inputs, parts) if self._mode == Mode.FOLD else inputs, results)
                self._yielded += 1
                if error is not None:
                    del results[error[0] :]
                    self._failing = True  # raised when next resumed, without waiting
                    self._taken(len(results), len(results))
                    yield releasing(results, parts)
                    raise error[1]
                self._store(seq, results)
                # A fold's partials stand for all the chunk's items.
                used = length if self._mode == Mode.FOLD else len(results)
                self._taken(len(results), used)
                yield releasing(results, parts)
                del results, parts  # the caller's loop alone decides how long a result lives
                # Resumed once the caller has used every result of the chunk.
                self.sizer.observe_caller(used, time.perf_counter() - started)
        except KeyboardInterrupt:  # ctrl-C while waiting: this map's tasks stop, not only the wait
            self._interrupt()
            raise
        finally:
            self.close()
            if self._bar is not None:
                self._bar.close()

    def _taken(self, results: int, items: int) -> None:
        """A chunk of ``results`` standing for ``items`` input items goes to the caller."""
        self.last_taken = results
        if self._bar is not None:
            self._bar.update(items)

    def _interrupt(self) -> None:
        """Stop: nobody waits for this map any more, so its running tasks are stopped too."""
        self.close()
        if self._interrupted is not None:
            self._interrupted()

    def close(self) -> None:
        """Stop: queued chunks are skipped, late results dropped."""
        with self._cond:
            self._closed = True
            for parts in self._parts.values():
                for part in parts:
                    part.free_unread()
            self._parts.clear()
            self._inputs.clear()
            self._wake()

    # -- waiting without blocking (async iteration, fabric.client.awaiting) -------------

    def taken(self) -> int:
        """Chunks the caller has taken so far."""
        return self._yielded

    def wake_when_ready(self, waker: Callable[[], None]) -> bool:
        """True if taking the next chunk would not wait; otherwise False, and
        ``waker`` is called (once, from the I/O thread) when it may not."""
        with self._cond:
            if self._next_ready():
                return True
            self._waker = waker
            return False

    def time_left(self) -> float | None:
        """Seconds until the map's timeout, or None without one."""
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def _next_ready(self) -> bool:
        if self._closed or self._failing or (self._exhausted and self._yielded == self._posted):
            return True
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return True  # taking it raises TimeoutError at once
        if not self._ordered:
            return bool(self._complete)
        length = self._lengths.get(self._yielded)
        return length is not None and self._filled.get(self._yielded, 0) >= length

    def _wake(self) -> None:
        """Call the waiting waker, if any (under ``_cond``)."""
        waker, self._waker = self._waker, None
        if waker is not None:
            waker()

    def _window(self) -> int:
        return max(MIN_WINDOW, WINDOW_PER_CREDIT * self._capacity())

    def _fill(self) -> None:
        while not self._exhausted and self._posted - self._yielded < self._window():
            # The free slots' sizes are cut before any is posted: the I/O thread measures results
            # while this runs, and on a loaded machine the first result came back between two posts
            # of the first window, so the unmeasured rest went as one batch (a 0 s task joined the
            # 6 s one after it, and its result waited 6 s: CPython's test_map_timeout).
            for size in [self.sizer.next_size() for _ in range(self._window() - (self._posted - self._yielded))]:
                chunk = self._take(size)
                if len(chunk) < size:
                    self._exhausted = True
                if len(chunk):
                    self._post_chunk(chunk)
                if self._exhausted:
                    break

    def _take(self, size: int) -> Sequence[Any]:
        """The next chunk: a slice of a sliceable input, else a list read from the iterator."""
        if self._sliced:
            start = self._items_posted
            return self._items[start : start + size]  # type: ignore[index]  # a Sequence when sliced
        chunk: list[Any] = []
        try:
            chunk.extend(itertools.islice(self._items, size))
        except Exception as exc:  # the caller's iterator failed: raise it at its position
            self._input_error = exc
            self._exhausted = True
        return chunk

    def _post_chunk(self, chunk: Sequence[Any]) -> None:
        start = self._items_posted
        seq = self._new_seq(len(chunk))
        if self._kept is not None:
            self._inputs[seq] = chunk
        if self._cache is None:
            self._post_items(seq, start, chunk, None)
            return
        try:
            keys = self._cache.keys(chunk, start)
        except CacheKeyError as exc:
            self._fail_from(seq, 0, len(chunk), None, exc)
            return
        hits, owners = self._cache.lookup(keys)
        computed = self._first_of_each_miss(seq, keys, hits)
        if len(hits) == len(chunk):  # all hits: one contiguous part, the fast path of _assemble
            self._add(seq, Part(0, len(chunk), blobs=[hits[i] for i in range(len(chunk))]))
        elif hits:
            found = sorted(hits)
            self._add(seq, Part(0, len(found), indices=found, blobs=[hits[i] for i in found]))
        if not computed:
            self.sizer.observe(len(chunk), CACHE_HIT_S * len(chunk))  # all hits: let chunks grow
            return
        self._to_store[seq] = (computed, [keys[i] for i in computed])
        for owner, positions in misses_by_owner(computed, owners):  # each runs where its result is stored
            if len(positions) == len(chunk):
                self._post_items(seq, start, chunk, None, owner=owner)
            else:
                self._post_items(seq, start, [chunk[i] for i in positions], positions, owner=owner)

    def _first_of_each_miss(self, seq: int, keys: list[bytes], hits: dict[int, bytes]) -> list[int]:
        """The positions of a cached chunk to compute: the first of each key that missed.
        Its repeats take its result, as identical keys in a Dask graph are computed once,
        so the chunk is complete without them."""
        if len(hits) == len(keys):
            return []
        first: dict[bytes, int] = {}
        computed: list[int] = []
        repeats: dict[int, int] = {}
        for position, key in enumerate(keys):
            if position not in hits:
                source = first.setdefault(key, position)
                if source == position:
                    computed.append(position)
                else:
                    repeats[position] = source
        if repeats:
            self._repeats[seq] = repeats
            with self._cond:
                self._lengths[seq] -= len(repeats)
        return computed

    def _post_items(self, seq: int, start: int, items: Sequence[Any], indices: list[int] | None,
                    encoder: codec.PayloadEncoder | None = None, recompute: bool = True, owner: bytes = b"") -> None:
        """Encode items of chunk ``seq`` (all, or those at ``indices``) into one batch; a
        chunk holding futures not done is posted once they are (from the thread that
        finishes the last), with a failed one as a marker its item raises; one reading
        kept results lost with their nodes, once they are computed again (a failed
        recomputation: sent as it is, each item raising ObjectLostError).  ``owner``: the
        node owning the cache keys of these misses, where they should run."""
        try:
            keys = self._keys_of(items) if self._keys_of is not None else None
        except Exception as exc:  # the caller's partition_by raised: the map fails at this chunk
            self._fail_from(seq, 0, len(items), indices, exc)
            return
        refs = start_collecting()
        try:
            with failed_as_markers() if encoder is not None else contextlib.nullcontext():
                codec_id, payload = (encoder or self._encoder).encode(items)
            if self._check_size is not None:
                self._check_size(payload, f"map input items {start}..{start + len(items) - 1}")
        except PendingArgument:
            later = codec.PayloadEncoder()  # the I/O thread encodes it, while this thread may encode others
            when_done(futures_in(list(items)),
                      lambda _: self._post_items(seq, start, items, indices, later, owner=owner))
            return
        except SerializationError as exc:
            self._post_unencodable(seq, start, items, indices, exc)
            return
        finally:
            stop_collecting()
        lost = self._recomputing(refs) if refs and recompute and self._recomputing is not None else None
        if lost:
            when_done(lost, lambda _: self._post_items(seq, start, items, indices, codec.PayloadEncoder(), False,
                                                       owner))
            return
        self._post(
            Batch(
                next_batch_id(), self._digest, self._fn_payload, self._mode, codec_id, [len(payload)], payload,
                len(items), self, seq=seq, sizer=self.sizer, retries=self._retries, indices=indices,
                refs=refs or None, data=self._locate(refs, owner) if (refs or owner) and self._locate else None,
                placing=self._placing, keys=keys,
            )
        )

    def _post_unencodable(
        self, seq: int, start: int, items: Sequence[Any], indices: list[int] | None, exc: SerializationError
    ) -> None:
        """Send the items before the first one that cannot be encoded; fail the map there."""
        bad = next((i for i, item in enumerate(items) if not _encodes(item)), None)
        if bad is None:  # every item encodes alone: the batch was too large
            self._fail_from(seq, 0, len(items), indices, exc)
            return
        if bad:
            self._post_items(seq, start, items[:bad], indices[:bad] if indices else None)
        position = indices[bad] if indices else bad
        error = SerializationError(f"map input item {start + position}: {_encoding_error(items[bad])}")
        self._fail_from(seq, bad, len(items), indices, error)

    def _fail_from(self, seq: int, first: int, count: int, indices: list[int] | None, exc: BaseException) -> None:
        """Fail items ``first..count`` of what was posted for chunk ``seq``; stop reading input."""
        part = Part(first, count - first, exc=exc, indices=indices[first:] if indices else None)
        self._add(seq, part)
        self._exhausted = True

    def _store(self, seq: int, results: list[Any]) -> None:
        """Write the results computed for a cached chunk's misses back to the cache."""
        entry = self._to_store.pop(seq, None)
        if entry is not None and self._cache is not None:
            positions, keys = entry
            self._cache.store(keys, [results[p] for p in positions])

    def _new_seq(self, n_items: int) -> int:
        seq = self._posted
        with self._cond:
            self._lengths[seq] = n_items
            self._starts[seq] = self._items_posted
        self._posted += 1
        self._items_posted += n_items
        return seq

    def _wait_chunk(self) -> tuple[int, int, list[Part]]:
        with self._cond:
            while True:
                seq = self._ready_seq()
                if seq is not None:
                    self._filled.pop(seq)
                    length = self._lengths.pop(seq)
                    del self._starts[seq]
                    return seq, length, self._parts.pop(seq)
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



def misses_by_owner(computed: list[int], owners: dict[bytes, list[int]]) -> list[tuple[bytes, list[int]]]:
    """The positions of a chunk's misses grouped by the node owning their keys
    (``owners``: the positions of all its keys per owner), in chunk order."""
    if len(owners) <= 1:
        return [(next(iter(owners), b""), computed)]
    wanted = set(computed)
    groups = [(node_id, [i for i in positions if i in wanted]) for node_id, positions in owners.items()]
    return [(node_id, positions) for node_id, positions in groups if positions]


def releasing(results: list[Any], parts: list[Part]) -> Iterable[Any]:
    """What the caller iterates for one chunk: the list itself when its items are
    small atoms (ints, floats, None, short strings), which cost nothing to keep
    until the chunk is used up; otherwise an iterator that drops each result as it
    hands it over, so a large result the caller has let go of is freed at once
    (CPython bpo-14406).  The choice is made once per chunk, from its first item
    and its payload's size per item: dropping costs ~40 ns per item, about what
    the rest of the client's work on an empty task costs (W1)."""
    if not results:
        return results
    size = sum(codec.frames_size(part.payload or part.blobs or ()) for part in parts)
    if type(results[0]) in _SMALL_ATOMS and size <= SMALL_RESULT_BYTES * len(results):
        return results
    results.reverse()
    # map, not iter(pop, sentinel): a sentinel is compared with == to every result,
    # which a numpy array answers with an array.
    return map(list.pop, itertools.repeat(results, len(results)))


def _assemble(length: int, parts: list[Part]) -> tuple[list[Any], tuple[int, BaseException] | None]:
    """Results of a chunk in item order, and its first error as (index, exception)."""
    if len(parts) == 1 and parts[0].indices is None:  # the common case: one batch, no copy
        return parts[0].decode()
    results: list[Any] = [None] * length
    first_error: tuple[int, BaseException] | None = None
    for part in parts:
        values, error = part.decode()
        positions = part.positions()
        for position, value in zip(positions, values):
            results[position] = value
        if error is not None and (first_error is None or positions[error[0]] < first_error[0]):
            first_error = (positions[error[0]], error[1])
    return results, first_error


def _partials(parts: list[Part]) -> tuple[list[Any], tuple[int, BaseException] | None]:
    """A folded chunk's partial results, one per part in input order, and its
    first error as (index among them, exception)."""
    partials: list[Any] = []
    for part in sorted(parts, key=lambda p: p.offset):
        values, error = part.decode(1)
        if error is not None:
            return partials, (len(partials), error[1])
        partials.extend(values)
    return partials, None


def _fold_inputs(chunk: Sequence[Any], parts: list[Part]) -> list[Sequence[Any]]:
    """The items each partial of a folded chunk stands for, in the order :func:`_partials` gives them."""
    return [chunk[part.offset : part.offset + part.n_items] for part in sorted(parts, key=lambda p: p.offset)]


def _encodes(item: Any) -> bool:
    return _encoding_error(item) is None


def _encoding_error(item: Any) -> SerializationError | None:
    try:
        codec.pickle_frames(item)
    except SerializationError as exc:
        return exc
    return None


def sliced_input(iterable: Iterable[Any]) -> Iterator[Any] | Sequence[Any]:
    """What a one-input map reads: a range or a numpy array as itself, sliced into
    chunks (a sub-range pickles in a few bytes, an array slice is a view sent as
    one buffer: neither costs anything per item), anything else as an iterator."""
    return iterable if isinstance(iterable, range) or is_array(iterable) else iter(iterable)  # type: ignore[return-value]


def is_array(obj: object) -> bool:
    """A numpy array of one or more dimensions (numpy itself is not imported)."""
    kind = type(obj)
    return kind.__name__ == "ndarray" and kind.__module__ == "numpy" and getattr(obj, "ndim", 0) >= 1


def sized_length(iterables: Iterable[Any]) -> int | None:
    """The number of items a map will see, when every input knows its length."""
    lengths = []
    for iterable in iterables:
        try:
            lengths.append(len(iterable))
        except TypeError:
            return None
    return min(lengths) if lengths else None
