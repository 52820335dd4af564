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


def peak_rss_mb(items: int) -> float:
    process = psutil.Process()
    peak = process.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(SAMPLE_S):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with fabric.connect(workers=2) as fx:
        for _ in fx.map(identity, (i for i in range(items))):
            pass
    done.set()
    sampler.join()
    return peak / 2**20


if __name__ == "__main__":
    n = int(sys.argv[1])
    print(json.dumps({"items": n, "peak_rss_mb": peak_rss_mb(n)}))
