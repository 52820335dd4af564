"""W9, W10 and put/get bandwidth: data on the fabric (``python -m benchmarks.objects``).

- W9 broadcast: one float64 array read by many tasks, each summing one slice:
  ``fx.put`` once and pass the Ref, against passing the array with every task
  (measured on fewer tasks, since each carries the whole array: the figure is a
  rate per task) and ``multiprocessing.Pool`` with the array set in an initializer.
- W10 pipeline: tasks making 1 MiB results, then tasks reading them: with
  ``keep=True`` (the intermediates stay on the nodes) against results through
  the client.  Bytes through the client are counted from what the client sends
  and receives as task arguments and results.
- Bandwidth: put and get of one large array against a local memcpy.

Repetitions are interleaved and figures are medians, as in the main harness.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Callable

import numpy as np

import fabric

_shared: np.ndarray | None = None


def slice_sum(array: np.ndarray, i: int, parts: int) -> float:
    step = len(array) // parts
    return float(array[i * step : (i + 1) * step].sum())


def _init(array: np.ndarray) -> None:
    global _shared
    _shared = array


def pool_slice_sum(args: tuple[int, int]) -> float:
    assert _shared is not None
    return slice_sum(_shared, *args)


def make_mb(i: int) -> np.ndarray:
    return np.full((1 << 20) // 8, float(i))


def first(array: np.ndarray) -> float:
    return float(array[0] + array[-1])


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def w9(fx: fabric.Fabric, mb: int, tasks: int, per_task_tasks: int, repeat: int) -> dict[str, float]:
    array = np.random.default_rng(0).random(mb * (1 << 20) // 8)
    expected = sum(slice_sum(array, i, tasks) for i in range(tasks))
    figures: dict[str, list[float]] = {"put": [], "per_task": [], "mp.Pool": []}
    for _ in range(repeat):
        def with_put() -> None:
            ref = fx.put(array)
            got = sum(fx.map(slice_sum, [ref] * tasks, range(tasks), [tasks] * tasks))
            assert abs(got - expected) < 1e-6 * abs(expected)
            fx.free(ref)

        figures["put"].append(tasks / timed(with_put))
        figures["per_task"].append(per_task_tasks / timed(
            lambda: list(fx.map(slice_sum, [array] * per_task_tasks, range(per_task_tasks),
                                [tasks] * per_task_tasks, chunksize=1))))

        def pool() -> None:
            with multiprocessing.get_context("fork").Pool(fx.workers(), _init, (array,)) as p:
                p.map(pool_slice_sum, [(i, tasks) for i in range(tasks)])

        figures["mp.Pool"].append(tasks / timed(pool))
    return {name: statistics.median(values) for name, values in figures.items()}


def w10(fx: fabric.Fabric, tasks: int, repeat: int) -> dict[str, float]:
    figures: dict[str, list[float]] = {"keep": [], "through client": []}
    for _ in range(repeat):
        def keep() -> None:
            kept = list(fx.map(make_mb, range(tasks), keep=True))
            assert len(list(fx.map(first, kept))) == tasks

        def through() -> None:
            made = fx.map(make_mb, range(tasks))
            assert len(list(fx.map(first, made))) == tasks

        figures["keep"].append(tasks / timed(keep))
        figures["through client"].append(tasks / timed(through))
    return {name: statistics.median(values) for name, values in figures.items()}


def bandwidth(fx: fabric.Fabric, mb: int, repeat: int) -> dict[str, float]:
    array = np.random.default_rng(1).random(mb * (1 << 20) // 8)
    figures: dict[str, list[float]] = {"put GB/s": [], "get GB/s": [], "memcpy GB/s": []}
    gigabytes = array.nbytes / 1e9
    for _ in range(repeat):
        ref: list[fabric.Ref] = []
        figures["put GB/s"].append(gigabytes / timed(lambda: ref.append(fx.put(array))))
        figures["get GB/s"].append(gigabytes / timed(lambda: fx.get(ref[0])))
        fx.free(ref[0])
        figures["memcpy GB/s"].append(gigabytes / timed(lambda: array.copy()))
    return {name: statistics.median(values) for name, values in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    mb, tasks, w10_tasks, bw_mb = (40, 200, 100, 200) if args.quick else (200, 1000, 1000, 1024)
    with fabric.connect(workers=2) as fx:
        fx.submit(int).result()
        print("W9 tasks/s:", w9(fx, mb, tasks, 8 if args.quick else 20, args.repeat))
        print("W10 tasks/s:", w10(fx, w10_tasks, args.repeat))
        print("bandwidth:", bandwidth(fx, bw_mb, args.repeat))


if __name__ == "__main__":
    main()
