"""The workloads W1..W8 (plus start-up, memory, cluster and fault runs), each
measured on every system in the same run, repetitions interleaved."""

from __future__ import annotations

import os
import signal
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

import fabric
from fabric.wire.security import write_key_file

from . import workloads as wl
from .measure import Figures, timed
from .systems import System


@dataclass(frozen=True)
class Sizes:
    w1: int
    w2: int
    w3: int
    w4: int
    w5: int
    w6: int
    w7_tasks: int
    w7_hits: int
    faults: int

    @classmethod
    def for_mode(cls, mode: str) -> Sizes:
        if mode == "tiny":
            return cls(20_000, 500, 100, 50, 4, 2_000, 20, 2_000, 200)
        if mode == "quick":
            return cls(1_000_000, 5_000, 1_000, 300, 40, 20_000, 200, 50_000, 2_000)
        return cls(4_000_000, 50_000, 5_000, 2_000, 200, 200_000, 2_000, 200_000, 10_000)


def w1_empty_map(systems: dict[str, System], sizes: Sizes, figures: Figures) -> None:
    for name, system in systems.items():
        for variant, run in system.maps().items():
            n = system.cap(sizes.w1, "W1", variant)
            figures.add("W1 empty map", f"items/s {variant}", name, n / timed(lambda: run(wl.identity, range(n))),
                        "items/s")


def w2_submit(systems: dict[str, System], sizes: Sizes, figures: Figures) -> None:
    for name, system in systems.items():
        n = system.cap(sizes.w2, "W2")
        elapsed = timed(lambda: system.submit_all(wl.identity, list(range(n))))
        figures.add("W2 submit+gather", "tasks/s", name, n / elapsed, "tasks/s")


def w3_cpu(systems: dict[str, System], sizes: Sizes, figures: Figures, iterations: int, serial: System) -> None:
    """1 ms tasks; efficiency against the serial rate measured just before and just after each system's run
    (a serial run between two systems serves both)."""
    items = [iterations] * sizes.w3
    sample = items[: sizes.w3 // 4]

    def serial_rate() -> float:
        return len(sample) / timed(lambda: serial.maps()["map"](wl.spin, sample))

    before = serial_rate()
    for name, system in systems.items():
        if name == "serial":
            continue
        rate = sizes.w3 / timed(lambda: system.balanced(wl.spin, items))
        after = serial_rate()
        baseline = statistics.mean([before, after])
        figures.add("W3 1 ms tasks", "efficiency %", name, 100 * rate / (system.workers * baseline), "%")
        figures.add("W3 1 ms tasks", "tasks/s per core", name, rate / system.workers, "tasks/s")
        before = after


def w4_latency(systems: dict[str, System], sizes: Sizes, figures: Figures) -> None:
    for name, system in systems.items():
        if name == "serial":
            continue
        samples = sorted(timed(lambda: system.round_trip(wl.identity, 1)) for _ in range(system.cap(sizes.w4, "W4")))
        figures.add("W4 round trip", "median µs", name, 1e6 * statistics.median(samples), "µs", False)
        figures.add("W4 round trip", "p99 µs", name, 1e6 * samples[int(0.99 * (len(samples) - 1))], "µs", False)


def w5_payload(systems: dict[str, System], sizes: Sizes, figures: Figures) -> None:
    blobs = [os.urandom(1 << 20) for _ in range(sizes.w5)]
    for name, system in systems.items():
        run, some = next(iter(system.maps().values())), blobs[: system.cap(len(blobs), "W5")]
        figures.add("W5 1 MB arguments", "MB/s", name, len(some) / timed(lambda: run(len, some)), "MB/s")


def w6_wordcount(systems: dict[str, System], sizes: Sizes, figures: Figures) -> None:
    lines = list(wl.corpus(sizes.w6))
    expected = sum((wl.count_words(line) for line in lines[:100]), Counter())
    for name, system in systems.items():
        some = lines[: system.cap(len(lines), "W6")]
        for variant, reduce in system.reduces().items():
            total = None

            def run() -> None:
                nonlocal total
                total = reduce(wl.count_words, wl.merge_counts, some, Counter())

            figures.add("W6 word count", f"lines/s {variant}".strip(), name, len(some) / timed(run), "lines/s")
            assert total is not None and all(total[w] >= n for w, n in expected.items())


def startup(system_types: dict[str, type[System]], workers: int, figures: Figures) -> None:
    for name, cls in system_types.items():
        if name != "serial":
            start_timed(cls(workers), figures).stop()


def start_timed(system: System, figures: Figures) -> System:
    """Start ``system``, recording the time to its first result."""

    def first_result() -> None:
        system.start()
        system.round_trip(wl.identity, 1)

    figures.add("start-up", "s to first result", system.name, timed(first_result), "s", False)
    return system


def w7_cache(workers: int, sizes: Sizes, figures: Figures, iterations: int) -> None:
    """fabric only: a cached map's second run, hit throughput, and the first run's overhead."""
    with fabric.connect(workers=workers) as fx:
        tag = time.time_ns()  # fresh keys for each repetition
        params = [(tag, i) for i in range(sizes.w7_tasks)]
        first = timed(lambda: list(fx.map(_sleep_10ms, params, cache=True)))
        second = timed(lambda: list(fx.map(_sleep_10ms, params, cache=True)))
        figures.add("W7 cache", "second run speed-up ×", "fabric", first / second, "×")
        keys = [(tag, i) for i in range(sizes.w7_hits)]
        list(fx.map(_echo, keys, cache=True))
        figures.add("W7 cache", "hits/s per core", "fabric",
                    sizes.w7_hits / timed(lambda: list(fx.map(_echo, keys, cache=True))) / workers, "hits/s")
        spins = [(tag + i, iterations) for i in range(sizes.w3)]
        plain = timed(lambda: list(fx.map(_spin_pair, spins)))
        cached = timed(lambda: list(fx.map(_spin_pair, spins, cache=True)))  # all misses: fresh keys
        figures.add("W7 cache", "all-miss overhead %", "fabric", 100 * (cached / plain - 1), "%", False)


def _sleep_10ms(param: tuple[int, int]) -> int:
    time.sleep(0.01)  # an I/O-bound 10 ms task
    return param[1]


def _echo(param: tuple[int, int]) -> int:
    return param[1]


def _spin_pair(param: tuple[int, int]) -> int:
    return wl.spin(param[1])


def w8_scaling(workers: int, sizes: Sizes, figures: Figures, iterations: int) -> None:
    for n in range(1, workers + 1):
        with fabric.connect(workers=n) as fx:
            fabric.wait([fx.submit(abs, 1) for _ in range(4 * n)])
            rate = sizes.w1 / timed(lambda: list(fx.map(wl.identity, range(sizes.w1))))
            figures.add("W8 scaling", f"empty items/s per core, {n} workers", "fabric", rate / n, "items/s")
            rate = sizes.w3 / timed(lambda: list(fx.map(wl.spin, [iterations] * sizes.w3)))
            figures.add("W8 scaling", f"1 ms tasks/s per core, {n} workers", "fabric", rate / n, "tasks/s")


def keyed(workers: int, sizes: Sizes, figures: Figures) -> None:
    """The cost of a cluster key (CurveZMQ encrypts every byte both ways): keyed ÷ plain rates, each
    measured on a fabric of its own, one after the other."""
    blobs = [os.urandom(1 << 20) for _ in range(sizes.w5)]
    rates: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="fabric-bench-key-") as scratch:
        key_file = write_key_file(os.path.join(scratch, "cluster.key")).path
        for name, key in (("plain", None), ("keyed", key_file)):
            with fabric.connect(workers=workers, key_file=key) as fx:
                fabric.wait([fx.submit(abs, 1) for _ in range(4 * workers)])
                empty = sizes.w1 / timed(lambda: list(fx.map(wl.identity, range(sizes.w1))))
                rates[name] = empty, len(blobs) / timed(lambda: list(fx.map(len, blobs)))
    figures.add("keyed", "empty items/s, keyed ÷ plain", "fabric", rates["keyed"][0] / rates["plain"][0], "×")
    figures.add("keyed", "1 MB arguments MB/s, keyed ÷ plain", "fabric", rates["keyed"][1] / rates["plain"][1], "×")


def timed_cpu(work: Callable[[], Any]) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds (every thread's: the client's I/O thread too)."""
    cpu = time.process_time()
    wall = timed(work)
    return wall, time.process_time() - cpu


class FirstCandidate(fabric.Placement):
    """A Python policy doing the least one can, so its figures are the placement path's own cost."""

    def choose(self, batch: fabric.BatchInfo, candidates: list[fabric.Candidate]) -> fabric.Candidate:
        return candidates[0]


def placement(workers: int, sizes: Sizes, figures: Figures, iterations: int, pairs: int = 3) -> None:
    """What the placement path costs, against the default path on the same fabric, ``pairs`` times
    interleaved: a map cut into batches of 100 empty tasks with a Python policy (µs per batch more), and
    W3's 1 ms tasks mapped with ``partition_by`` ÷ a plain map."""
    with fabric.connect(workers=workers) as fx:
        fabric.wait([fx.submit(abs, 1) for _ in range(4 * workers)])
        n, chunk = sizes.w1 // 5, 100
        items = [iterations] * sizes.w3
        list(fx.map(wl.spin, items))  # the sizer learns the task's cost before either is timed
        for _ in range(pairs):
            plain_s, plain_cpu = timed_cpu(lambda: list(fx.map(wl.identity, range(n), chunksize=chunk)))
            custom_s, custom_cpu = timed_cpu(
                lambda: list(fx.map(wl.identity, range(n), chunksize=chunk, placement=FirstCandidate())))
            figures.add("placement", "µs per batch, Python policy − default", "fabric",
                        1e6 * (custom_s - plain_s) / (n // chunk), "µs", False)
            figures.add("placement", "client CPU µs per batch, Python policy − default", "fabric",
                        1e6 * (custom_cpu - plain_cpu) / (n // chunk), "µs", False)
            plain_s = timed(lambda: list(fx.map(wl.spin, items)))
            keyed_s = timed(lambda: list(fx.map(wl.spin, items, partition_by=wl.identity)))
            figures.add("placement", "W3 1 ms tasks/s, partition_by ÷ plain map", "fabric", plain_s / keyed_s, "×")


def faults(workers: int, sizes: Sizes, figures: Figures, iterations: int) -> None:
    """Time for n × 1 ms tasks with one worker SIGKILLed at 50 %, against no fault."""
    with fabric.connect(workers=workers) as fx:
        fabric.wait([fx.submit(abs, 1) for _ in range(4 * workers)])
        items = [iterations] * sizes.faults
        clean = timed(lambda: list(fx.map(wl.spin, items)))

        def with_kill() -> None:
            for index, _ in enumerate(fx.map(wl.spin, items)):
                if index == len(items) // 2:
                    victim = psutil.Process(fx._embedded.process.pid).children()[0]
                    os.kill(victim.pid, signal.SIGKILL)

        figures.add("faults", "time with a worker killed at 50 % ÷ clean", "fabric", timed(with_kill) / clean, "×",
                    False)
