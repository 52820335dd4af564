"""Peak RSS of a client mapping over an n-item generator, in a process of its own.

    python -m benchmarks.rss N  ->  prints {"items": N, "peak_rss_mb": ...}
"""

from __future__ import annotations

import json
import sys
import threading

import psutil

import fabric

from .workloads import identity

SAMPLE_S = 0.01


class PeakRss:
    """Samples this process's resident memory while the ``with`` block runs; ``peak`` in bytes."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._sampler.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._sampler.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    def _sample(self) -> None:
        while not self._done.wait(SAMPLE_S):
            self.peak = max(self.peak, self.process.memory_info().rss)


def peak_rss_mb(items: int) -> float:
    with PeakRss() as rss, fabric.connect(workers=2) as fx:
        for _ in fx.map(identity, (i for i in range(items))):
            pass
    return rss.peak / 2**20


if __name__ == "__main__":
    n = int(sys.argv[1])
    print(json.dumps({"items": n, "peak_rss_mb": peak_rss_mb(n)}))
