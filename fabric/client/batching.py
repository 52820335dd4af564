"""Adaptive batch size: how many items go into the next task batch.

Every batch costs a fixed ~0.1-0.5 ms (two hops, headers, wake-ups), so tiny
tasks must travel in large batches; long tasks must travel alone so that an
idle worker can take the next one.  :class:`BatchSizer` aims each batch at
``TARGET_BATCH_S`` of worker time, measured from the results coming back
(the worker reports its decode + run + encode time per batch), and at most
``CALLER_BATCH_S`` of the caller's time: decoding the batch's results and
using them (a reduce, the caller's loop), measured by the map stream.

An input of known length is cut like guided self-scheduling: batches of up to
``LONG_BATCH_S`` while there is plenty left, then shrinking with what remains
so the workers finish together.
"""

from __future__ import annotations

import math

# 20 ms of worker time per batch.  Each batch wakes about eight threads across
# processes (client, libzmq I/O threads, worker), and on a 2-vCPU virtual machine
# every wake-up pre-empts a worker: 1 ms tasks (W3) ran at ~84-87 % of the serial
# rate per core with 5 ms batches, ~91-97 % with 20 ms (benchmarks/RESULTS.md).
TARGET_BATCH_S = 0.02
# 5 ms of the caller's time per batch.  The caller decodes and consumes a batch's
# results in one piece; with 20 ms of them per batch the word count (W6, reduced in
# the client) fell from ~200 k to ~140 k lines/s.
CALLER_BATCH_S = 0.005
# Up to 100 ms per batch while at least four batches per worker remain of an input of
# known length: each batch costs the client ~150-200 us of CPU in wake-ups when they
# are sparse, which a 2-core machine takes from the workers (W3: 250 batches of 20 ms
# used ~50 ms of the client's CPU per 2.5 s run, ~60 batches ~20 ms).
LONG_BATCH_S = 0.1
# The tail of a sized input is cut no finer than this: balancing it further costs
# more in batches than it saves in idle workers.
TAIL_BATCH_S = 0.005
MAX_BATCH_ITEMS = 65_536  # bounds the memory of one batch of tiny items
GROWTH = 8  # until measured, a stream grows its batches by at most this factor
SMOOTHING = 0.3  # weight of the newest measurement in the per-item estimate


class BatchSizer:
    """Per-stream (or per-function) estimate of seconds per item.

    ``chunksize`` fixes the size.  With ``length`` (the input's, when known),
    every batch leaves at least four per worker for the rest of the input, so
    its tail balances over ``workers``.
    """

    __slots__ = ("chunksize", "workers", "per_item_s", "caller_per_item_s", "_last", "_remaining")

    def __init__(self, chunksize: int | None = None, length: int | None = None, workers: int = 1) -> None:
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize}")
        self.chunksize = chunksize
        self.workers = max(1, workers)
        self.per_item_s: float | None = None  # worker time
        self.caller_per_item_s: float | None = None
        self._last = 1
        self._remaining = length  # items not yet handed out, when the length is known

    def observe(self, n_items: int, elapsed_s: float) -> None:
        """A worker took ``elapsed_s`` for a batch of ``n_items``."""
        self.per_item_s = _smoothed(self.per_item_s, n_items, elapsed_s)

    def observe_caller(self, n_items: int, elapsed_s: float) -> None:
        """The caller took ``elapsed_s`` to decode and use the results of ``n_items``."""
        self.caller_per_item_s = _smoothed(self.caller_per_item_s, n_items, elapsed_s)

    def next_size(self) -> int:
        """The size of the next batch, counted as handed out."""
        if self.chunksize is not None:
            return self.chunksize
        if self.per_item_s is None:
            size = 1
        else:
            size = min(max(1, math.floor(self._ideal(self.per_item_s))), self._last * GROWTH)
        if self._remaining is not None:
            size = min(size, self._tail_limit())
        size = max(1, min(size, MAX_BATCH_ITEMS))
        if self._remaining is not None:
            self._remaining = max(0, self._remaining - size)
        self._last = size
        return size

    def _ideal(self, per_item_s: float) -> float:
        ideal = TARGET_BATCH_S / per_item_s
        if self._remaining is not None:
            ideal = max(ideal, min(LONG_BATCH_S / per_item_s, self._share()))
        if self.caller_per_item_s:
            ideal = min(ideal, CALLER_BATCH_S / self.caller_per_item_s)
        return ideal

    def _share(self) -> int:
        """A quarter of one worker's share of what remains."""
        return math.ceil((self._remaining or 0) / (4 * self.workers))

    def _tail_limit(self) -> int:
        if self.per_item_s is None:
            return self._share()
        return max(self._share(), math.floor(TAIL_BATCH_S / self.per_item_s))


def _smoothed(old: float | None, n_items: int, elapsed_s: float) -> float | None:
    """The per-item estimate after a new measurement (ignored when empty)."""
    if n_items <= 0 or elapsed_s <= 0:
        return old
    sample = elapsed_s / n_items
    return sample if old is None else old + SMOOTHING * (sample - old)

