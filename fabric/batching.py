"""Adaptive batch size: how many items go into the next task batch.

Every batch costs a fixed ~0.1-0.5 ms (two hops, headers, wake-ups), so tiny
tasks must travel in large batches; long tasks must travel alone so that an
idle worker can take the next one.  :class:`BatchSizer` aims each batch at
``TARGET_BATCH_S`` of worker time, measured from the results coming back
(the worker reports its decode + run + encode time per batch).
"""

from __future__ import annotations

import math

# 5 ms of work per batch keeps the fixed per-batch cost to a few % (W3 in
# benchmarks/RESULTS.md), while a batch is short enough that a map's tail
# balances and a client-side reduce stays fed.  20 ms was tried: W3 (1 ms tasks)
# moved within its noise (~87-97 % either way on a 2-vCPU VM), while W6 (word
# count, reduced in the client) fell from ~200 k to ~140 k lines/s, since the
# client decodes and folds each result batch in one piece.
TARGET_BATCH_S = 0.005
MAX_BATCH_ITEMS = 65_536  # bounds the memory of one batch of tiny items
GROWTH = 8  # until measured, a stream grows its batches by at most this factor
SMOOTHING = 0.3  # weight of the newest measurement in the per-item estimate


class BatchSizer:
    """Per-stream (or per-function) estimate of seconds per item.

    ``chunksize`` fixes the size; ``balance_limit`` caps it so that a sized
    input is cut into several batches per worker and its tail balances.
    """

    __slots__ = ("chunksize", "balance_limit", "per_item_s", "_last")

    def __init__(self, chunksize: int | None = None, balance_limit: int | None = None) -> None:
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize}")
        self.chunksize = chunksize
        self.balance_limit = balance_limit
        self.per_item_s: float | None = None
        self._last = 1

    def observe(self, n_items: int, elapsed_s: float) -> None:
        if n_items <= 0 or elapsed_s <= 0:
            return
        sample = elapsed_s / n_items
        old = self.per_item_s
        self.per_item_s = sample if old is None else old + SMOOTHING * (sample - old)

    def next_size(self) -> int:
        if self.chunksize is not None:
            return self.chunksize
        if self.per_item_s is None:
            size = 1
        else:
            ideal = max(1, math.floor(TARGET_BATCH_S / self.per_item_s))
            size = min(ideal, self._last * GROWTH)
        if self.balance_limit is not None:
            size = min(size, self.balance_limit)
        size = max(1, min(size, MAX_BATCH_ITEMS))
        self._last = size
        return size


def balance_limit(length: int | None, workers: int) -> int | None:
    """At least four batches per worker for an input of known length."""
    if length is None:
        return None
    return max(1, math.ceil(length / (4 * max(1, workers))))
