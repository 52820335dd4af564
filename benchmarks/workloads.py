"""Task functions shared by every system (top-level, so every peer can pickle them)."""

from __future__ import annotations

import random
import time
from collections import Counter

VOCABULARY = [f"w{i:03d}" for i in range(400)]


def identity(x):
    return x


def spin(iterations: int) -> int:
    """CPU-bound busy loop; ``calibrate`` picks iterations for a target duration."""
    total = 0
    for i in range(iterations):
        total += i
    return total


def spin_cpu(seconds: float) -> float:
    """Busy for ``seconds`` of this process's CPU time: 1 ms of work whatever else
    shares the cores (a wall-clock spin would count time spent descheduled)."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return seconds


def calibrate(target_s: float) -> int:
    """Iterations of ``spin`` taking ``target_s`` seconds here, serially."""
    iterations = 1000
    while True:
        started = time.perf_counter()
        spin(iterations)
        elapsed = time.perf_counter() - started
        if elapsed > 0.02:
            return max(1, round(iterations * target_s / elapsed))
        iterations *= 2


def sleepy(seconds: float) -> float:
    time.sleep(seconds)  # a task that waits on I/O (W7: cache)
    return seconds


def corpus(lines: int, seed: int = 7):
    rng = random.Random(seed)
    for _ in range(lines):
        yield " ".join(rng.choices(VOCABULARY, k=12))


def count_words(line: str) -> Counter:
    return Counter(line.split())


def merge_counts(total: Counter, counts: Counter) -> Counter:
    total.update(counts)
    return total
