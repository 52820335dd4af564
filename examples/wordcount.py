"""Word count with map-reduce on the embedded local cluster.

Generates a deterministic corpus, counts words on every core with
``map_reduce`` (the mapper runs on the workers, which also merge each batch's
counts with ``combine=True``; this process merges one count per batch),
checks the answer against a serial count and prints the top words and the
speed.

    python examples/wordcount.py [LINES]
"""

import random
import sys
import time
from collections import Counter

import fabric

VOCABULARY = [f"word{i:03d}" for i in range(500)]


def corpus(lines: int, seed: int = 7):
    """Lines of 12 words, drawn with a skew so that some words are common."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(VOCABULARY))]
    for _ in range(lines):
        yield " ".join(rng.choices(VOCABULARY, weights, k=12))


def count_words(line: str) -> Counter:
    return Counter(line.split())


def merge_counts(total: Counter, counts: Counter) -> Counter:
    total.update(counts)
    return total


def main(lines: int = 200_000) -> int:
    started = time.perf_counter()
    with fabric.connect() as fx:
        counts = fx.map_reduce(count_words, merge_counts, corpus(lines), initial=Counter(), combine=True)
        workers = fx.workers()
    elapsed = time.perf_counter() - started
    expected = Counter(word for line in corpus(lines) for word in line.split())
    print(f"{lines:,} lines, {sum(counts.values()):,} words counted on {workers} workers in {elapsed:.2f} s")
    for word, n in counts.most_common(5):
        print(f"  {word}  {n:,}")
    if counts != expected:
        print("MISMATCH: the fabric's count differs from the serial count")
        return 1
    print("OK: matches the serial count")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000))
