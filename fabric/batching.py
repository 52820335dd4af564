"""Adaptive batch size: how many items go into the next task batch.

Every batch costs a fixed ~0.1-0.5 ms (two hops, headers, wake-ups), so tiny
tasks must travel in large batches; long tasks must travel alone so that an
idle worker can take the next one.  :class:`BatchSizer` aims each batch at
``TARGET_BATCH_S`` of worker time, measured from the results coming back
(the worker reports its decode + run + encode time per batch), and at most
``CALLER_BATCH_S`` of the caller's time: decoding the batch's results and
using them (a reduce, the caller's loop), measured by the map stream.
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
MAX_BATCH_ITEMS = 65_536  # bounds the memory of one batch of tiny items
GROWTH = 8  # until measured, a stream grows its batches by at most this factor
SMOOTHING = 0.3  # weight of the newest measurement in the per-item estimate


class BatchSizer:
    """Per-stream (or per-function) estimate of seconds per item.

    ``chunksize`` fixes the size; ``balance_limit`` caps it so that a sized
    input is cut into several batches per worker and its tail balances.
    """

    __slots__ = ("chunksize", "balance_limit", "per_item_s", "caller_per_item_s", "_last")

    def __init__(self, chunksize: int | None = None, balance_limit: int | None = None) -> None:
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize}")
        self.chunksize = chunksize
        self.balance_limit = balance_limit
        self.per_item_s: float | None = None  # worker time
        self.caller_per_item_s: float | None = None
        self._last = 1

    def observe(self, n_items: int, elapsed_s: float) -> None:
        """A worker took ``elapsed_s`` for a batch of ``n_items``."""
        self.per_item_s = _smoothed(self.per_item_s, n_items, elapsed_s)

    def observe_caller(self, n_items: int, elapsed_s: float) -> None:
        """The caller took ``elapsed_s`` to decode and use the results of ``n_items``."""
        self.caller_per_item_s = _smoothed(self.caller_per_item_s, n_items, elapsed_s)

    def next_size(self) -> int:
        if self.chunksize is not None:
            return self.chunksize
        if self.per_item_s is None:
            size = 1
        else:
            ideal = TARGET_BATCH_S / self.per_item_s
            if self.caller_per_item_s:
                ideal = min(ideal, CALLER_BATCH_S / self.caller_per_item_s)
            size = min(max(1, math.floor(ideal)), self._last * GROWTH)
        if self.balance_limit is not None:
            size = min(size, self.balance_limit)
        size = max(1, min(size, MAX_BATCH_ITEMS))
        self._last = size
        return size


def _smoothed(old: float | None, n_items: int, elapsed_s: float) -> float | None:
    """The per-item estimate after a new measurement (ignored when empty)."""
    if n_items <= 0 or elapsed_s <= 0:
        return old
    sample = elapsed_s / n_items
    return sample if old is None else old + SMOOTHING * (sample - old)


def balance_limit(length: int | None, workers: int) -> int | None:
    """At least four batches per worker for an input of known length."""
    if length is None:
        return None
    return max(1, math.ceil(length / (4 * max(1, workers))))
