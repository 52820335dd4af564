"""W11: word count by key, fabric ``by_key=True`` (one node, and two) against ``combine=True``, dask ``Bag.foldby``
and the serial loop.

Two corpora: ``zipf`` (words drawn with Zipf frequencies from a 120 k vocabulary,
~110 k distinct in the full run, as real text has) and ``wide`` (every key seen
twice, in lines far apart, ~1 M distinct keys: the merge dominates).  Each
measurement runs in a process of its own so its client peak RSS is its own::

    python -m benchmarks.by_key SYSTEM CORPUS TOKENS WORKERS  ->  {"seconds": ..., "peak_rss_mb": ..., "keys": ...}

``peak_rss_mb`` is the client's peak resident memory during the call above what
it held before (corpus built, system started): for the serial loop that is the
result dict itself, the floor every system pays.  ``client_cpu_s`` is the
client process's CPU time in the call: on one node the client merges the
partials (its CPU bounds the call once workers are many); on two nodes each
partition is merged on its owner node and the client only joins them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import operator
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psutil

import fabric

from . import cluster
from .measure import Figures
from .rss import PeakRss

VOCABULARY = 120_000  # Zipf (s = 1) over 120 k words: ~110 k distinct in 2 M tokens
WIDE_KEYS = 1_000_000
WORDS_PER_LINE = 10
TOKENS = {"tiny": 40_000, "quick": 400_000, "full": 2_000_000}
SYSTEMS = ("serial", "fabric by_key", "fabric by_key, 2 nodes", "fabric combine", "dask foldby")


def corpus(kind: str, tokens: int) -> list[str]:
    lines = tokens // WORDS_PER_LINE
    if kind == "wide":  # key k at line i and i + lines/2: its two values meet only in the merge
        keys = min(WIDE_KEYS, tokens // 2)
        return [" ".join(f"k{(i * WORDS_PER_LINE + j) * 7 % keys}" for j in range(WORDS_PER_LINE))
                for i in range(lines)]
    weights = list(itertools.accumulate(1 / rank for rank in range(1, VOCABULARY + 1)))
    words = random.Random(7).choices([f"w{r}" for r in range(VOCABULARY)], cum_weights=weights, k=tokens)
    return [" ".join(words[i : i + WORDS_PER_LINE]) for i in range(0, len(words), WORDS_PER_LINE)]


def word_pairs(line: str):
    return ((word, 1) for word in line.split())


def count_words(line: str) -> Counter:
    return Counter(line.split())


def merge_counts(total: Counter, counts: Counter) -> Counter:
    total.update(counts)
    return total


def _first(pair: tuple[str, int]) -> str:
    return pair[0]


def _add_value(total: int, pair: tuple[str, int]) -> int:
    return total + pair[1]


def serial(lines: list[str]) -> dict[str, int]:
    """The serial reduce-by-key loop over the same mapper and reducer."""
    totals: dict[str, int] = {}
    get = totals.get
    for line in lines:
        for word, one in word_pairs(line):
            totals[word] = get(word, 0) + one
    return totals


def runner(system: str, workers: int) -> tuple[Callable[[list[str]], dict[str, int]], Callable[[], None]]:
    """(count(lines), stop) for ``system``, started and warmed."""
    if system == "serial":
        return serial, lambda: None
    if system == "fabric by_key, 2 nodes":  # partitions merged on their nodes (on one node the client merges)
        stack = contextlib.ExitStack()
        address, _ = stack.enter_context(cluster.nodes([max(1, workers // 2)] * 2))
        fx = stack.enter_context(fabric.connect(address))
        fx.wait_for_workers(2 * max(1, workers // 2), timeout=30)
        return lambda lines: fx.map_reduce(word_pairs, operator.add, lines, by_key=True), stack.close
    if system.startswith("fabric"):
        fx = fabric.connect(workers=workers)
        fabric.wait([fx.submit(abs, 1) for _ in range(4 * workers)])
        if system == "fabric by_key":
            return lambda lines: fx.map_reduce(word_pairs, operator.add, lines, by_key=True), fx.shutdown
        return lambda lines: fx.map_reduce(count_words, merge_counts, lines, initial=Counter(), combine=True), \
            fx.shutdown
    import dask.bag
    from distributed import Client, LocalCluster

    dask_cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(dask_cluster)

    def foldby(lines: list[str]) -> dict[str, int]:
        bag = dask.bag.from_sequence(lines, npartitions=4 * workers).map(word_pairs).flatten()
        return dict(bag.foldby(_first, _add_value, 0, operator.add, 0).compute())

    def stop() -> None:
        client.close()
        dask_cluster.close()

    return foldby, stop


def measure(system: str, kind: str, tokens: int, workers: int) -> dict[str, Any]:
    lines = corpus(kind, tokens)
    count, stop = runner(system, workers)
    me = psutil.Process()
    with PeakRss() as rss:
        cpu = me.cpu_times()
        started = time.perf_counter()
        result = count(lines)
        seconds = time.perf_counter() - started
        cpu_after = me.cpu_times()
    stop()
    if sum(result.values()) != tokens:
        raise AssertionError(f"{system} counted {sum(result.values())} words of {tokens}")
    return {"seconds": seconds, "peak_rss_mb": (rss.peak - rss.start) / 2**20, "keys": len(result),
            "client_cpu_s": cpu_after.user + cpu_after.system - cpu.user - cpu.system}


def w11(workers: int, mode: str, repeat: int, with_dask: bool, figures: Figures) -> None:
    """Every system on both corpora, each measurement in a process of its own, repetitions interleaved.
    dask's foldby runs in the first repetition only: it takes ~100 s on the wide corpus."""
    tokens = TOKENS[mode]
    for rep in range(repeat):
        for kind in ("zipf", "wide"):
            got = {system: _run(system, kind, tokens, workers) for system in SYSTEMS
                   if system != "dask foldby" or (with_dask and rep == 0)}
            workload = f"W11 by key, {kind} ({got['serial']['keys'] // 1000:,} k keys)"
            for system, column in (("serial", "serial"), ("dask foldby", "dask"), ("fabric by_key", "fabric")):
                if system in got:
                    figures.add(workload, "M words/s", column, tokens / got[system]["seconds"] / 1e6, "M words/s")
                    figures.add(workload, "client peak RSS MB above start", column, got[system]["peak_rss_mb"], "MB",
                                False)
            for system in ("serial", "fabric by_key", "fabric by_key, 2 nodes", "fabric combine"):
                figures.add(workload, f"client CPU s, {system}", "fabric", got[system]["client_cpu_s"], "s", False)
            nodes2 = got["fabric by_key, 2 nodes"]
            figures.add(workload, "M words/s, by_key on 2 nodes", "fabric", tokens / nodes2["seconds"] / 1e6,
                        "M words/s")
            figures.add(workload, "client peak RSS MB, by_key on 2 nodes", "fabric", nodes2["peak_rss_mb"], "MB",
                        False)
            combine = got["fabric combine"]
            figures.add(workload, "M words/s, combine=True", "fabric", tokens / combine["seconds"] / 1e6, "M words/s")
            figures.add(workload, "client peak RSS MB, combine=True", "fabric", combine["peak_rss_mb"], "MB", False)
            figures.add(workload, "by_key ÷ combine=True ×", "fabric",
                        combine["seconds"] / got["fabric by_key"]["seconds"], "×")


def judge(figures: Figures) -> None:
    """by_key at least as fast as dask's foldby; on the wide corpus 1.5x combine=True, with the
    client's memory no more than the result's (the serial loop's peak, give or take 20 %)."""
    for workload in sorted({w for (w, _, _) in figures.items if w.startswith("W11")}):
        fab, dask = figures.get(workload, "M words/s", "fabric"), figures.get(workload, "M words/s", "dask")
        if fab and dask:
            figures.judge(workload, "M words/s", ">= dask foldby", fab.median >= dask.median)
        if "wide" in workload:
            ratio = figures.get(workload, "by_key ÷ combine=True ×", "fabric")
            if ratio:
                figures.judge(workload, ratio.metric, ">= 1.5", ratio.median >= 1.5)
            rss = figures.get(workload, "client peak RSS MB above start", "fabric")
            serial = figures.get(workload, "client peak RSS MB above start", "serial")
            if rss and serial:
                met = rss.median <= 1.2 * serial.median
                figures.judge(workload, rss.metric, "<= the result (serial's, +20 %)", met)


def _run(system: str, kind: str, tokens: int, workers: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.by_key", system, kind, str(tokens), str(workers)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
