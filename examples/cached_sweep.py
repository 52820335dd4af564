"""A parameter sweep whose results are kept in the fabric's result cache.

Estimates pi by Monte Carlo for many seeds. The first sweep runs every point
on the workers and stores each result on its owner node; the second finds
every point in the cache and runs no task. Editing ``estimate_pi``, or the
global ``SAMPLES`` it reads, changes its digest, so the next sweep computes
afresh: no stale result is ever served.

    python examples/cached_sweep.py [POINTS]
"""

import random
import sys
import time

import fabric

SAMPLES = 100_000


@fabric.cached
def estimate_pi(seed: int) -> float:
    rng = random.Random(seed)
    inside = sum(rng.random() ** 2 + rng.random() ** 2 <= 1.0 for _ in range(SAMPLES))
    return 4 * inside / SAMPLES


def sweep(fx: fabric.Fabric, seeds: range) -> tuple[list[float], float, int]:
    """The estimates, the seconds they took, and how many came from the cache."""
    hits = fx.cache.stats().hits
    started = time.perf_counter()
    estimates = list(fx.map(estimate_pi, seeds))
    return estimates, time.perf_counter() - started, fx.cache.stats().hits - hits


def main(points: int = 400) -> int:
    seeds = range(points)
    with fabric.connect() as fx:
        fx.cache.clear(estimate_pi)  # start cold, whatever an earlier run stored
        first, computed_s, _ = sweep(fx, seeds)
        second, cached_s, hits = sweep(fx, seeds)
    mean = sum(first) / points
    print(f"{points} estimates of pi, mean {mean:.5f}")
    print(f"  computed: {computed_s:.2f} s")
    print(f"  cached:   {cached_s:.3f} s ({computed_s / cached_s:.0f}x faster, {hits} hits)")
    served = second == first and hits == points
    print("OK: the second sweep was served from the cache" if served
          else "MISMATCH: the second sweep was not served entirely from the cache")
    return 0 if served else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 400))
