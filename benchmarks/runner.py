"""``fabric-bench`` / ``python -m benchmarks``: run the workloads, judge the targets, report.

::

    fabric-bench [--quick] [--workers N] [--only W1,W3,...] [--peers NAMES] [--repeat K]
                 [--json OUT] [--markdown OUT.md] [--plot OUT.png]

The peers: mp.Pool, ProcessPoolExecutor (PPE), loky, dask.distributed, ray and
ipyparallel, each with its knobs (``systems.py``); the ones not installed are
skipped with the reason.  Systems are started once, warmed, and measured in
turn inside each repetition, so a noisy moment of the shared machine hits every
system alike; each figure is the median of the repetitions.  Systems that keep
daemons busy while idle (dask, ray, ipyparallel) are started for their own turn
in each repetition instead, and each such start is a start-up figure.  The
heap is frozen after each start (see ``_freeze_heap``).  Slow systems get
fewer items (their ``caps``): figures are rates.  ``--plot`` draws the rates per
core of W1, W3 and W8 (needs matplotlib).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

from . import by_key, cluster, plot, report, suite
from . import workloads as wl
from .measure import Figures
from .systems import PEERS, SYSTEMS, System

ALL = ["W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W11", "startup", "rss", "cluster", "faults", "keyed",
       "placement"]
FABRIC_ONLY_REPEATS = {"tiny": 1, "quick": 1, "full": 3}
PER_SYSTEM = {"W1": suite.w1_empty_map, "W2": suite.w2_submit, "W4": suite.w4_latency, "W5": suite.w5_payload,
              "W6": suite.w6_wordcount}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fabric-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: under 2 minutes on 2 cores")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the smoke test's sizes
    parser.add_argument("--workers", type=int, default=2, help="worker processes for every system (default 2)")
    parser.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated peers (of {','.join(PEERS)})")
    parser.add_argument("--repeat", type=int, help="repetitions per figure (default 5, quick 3)")
    parser.add_argument("--json", default="benchmarks/out/latest.json", help="where to write the JSON")
    parser.add_argument("--markdown", help="also write a Markdown report here")
    parser.add_argument("--plot", metavar="OUT.png", help="also draw the rates per core of W1, W3, W8 (matplotlib)")
    return parser.parse_args(argv)


def _skip(name: str, skipped: dict[str, str]) -> bool:
    """True (and the reason noted once) when the system's package is missing."""
    reason = skipped.get(name) or SYSTEMS[name].missing()
    if reason and name not in skipped:
        skipped[name] = reason
        print(f"skipping {name}: {reason}", file=sys.stderr)
    return reason is not None


def _freeze_heap() -> None:
    """Every system's modules and clusters live in this process; frozen, their objects no longer make each
    full garbage collection longer for whichever system is being measured (they cost submit-heavy
    workloads such as W2 20-35 %, more than any one system's own heap)."""
    gc.collect()
    gc.freeze()


def run_workloads(systems: dict[str, System], serial: System, only: set[str], sizes: suite.Sizes, figures: Figures,
                  iterations: int) -> None:
    """One repetition of every per-system workload asked for, on ``systems``."""
    for key, workload in PER_SYSTEM.items():
        if key in only:
            workload(systems, sizes, figures)
    if "W3" in only:
        suite.w3_cpu(systems, sizes, figures, iterations, serial)


def start_systems(names: list[str], workers: int, skipped: dict[str, str]) -> dict[str, System]:
    systems = {}
    for name in names:
        if not _skip(name, skipped):
            systems[name] = SYSTEMS[name](workers)
            systems[name].start()
    return systems


def judge(figures: Figures, workers: int) -> list[str]:
    """Mark fabric's figures against the targets; return notes on peers' bests."""
    notes = []
    fabric_w1 = figures.best("W1 empty map", "items/s", "fabric")
    peer_bests = {s: figures.best("W1 empty map", "items/s", s) for s in PEERS}
    peer_bests = {s: f for s, f in peer_bests.items() if f is not None}
    if fabric_w1 and peer_bests:
        best_peer, best = max(peer_bests.items(), key=lambda kv: kv[1].median)
        ppe = peer_bests.get("PPE")
        met = fabric_w1.median >= best.median and (ppe is None or fabric_w1.median >= 2 * ppe.median)
        figures.judge("W1 empty map", fabric_w1.metric, f">= best peer ({best_peer} {best.metric}), >= 2x PPE", met)
        notes.append(f"W1 per worker core: fabric {fabric_w1.median / workers:,.0f} items/s")
    _at_least(figures, "W2 submit+gather", "tasks/s", 50_000)
    eff = figures.get("W3 1 ms tasks", "efficiency %", "fabric")
    if eff:
        peers = [f.median for (w, m, s), f in figures.items.items() if w == eff.workload and m == eff.metric
                 and s != "fabric"]
        figures.judge(eff.workload, eff.metric, ">= 95 % and >= every peer",
                      eff.median >= 95 and all(eff.median >= p - 1 for p in peers))
    _at_most(figures, "W4 round trip", "median µs", 200)
    _at_most(figures, "start-up", "s to first result", 0.5)
    _at_least(figures, "W7 cache", "second run speed-up ×", 50)
    _at_least(figures, "W7 cache", "hits/s per core", 100_000 / workers)
    _at_most(figures, "W7 cache", "all-miss overhead %", 10)
    _at_most(figures, "memory", "client peak RSS MB, 10M items", 150)
    _at_most(figures, "cluster", "failure detection s", 3.5)
    _at_most(figures, "faults", "time with a worker killed at 50 % ÷ clean", 1.3)
    by_key.judge(figures)
    two = figures.get("cluster", "empty items/s, 2 nodes × 1 worker", "fabric")
    one = figures.get("cluster", "empty items/s, 1 node × 2 workers", "fabric")
    if two and one:
        figures.judge("cluster", two.metric, ">= 90 % of 1 node × 2 workers", two.median >= 0.9 * one.median)
    return notes


def _at_least(figures: Figures, workload: str, metric: str, bound: float) -> None:
    figure = figures.get(workload, metric, "fabric")
    if figure:
        figures.judge(workload, metric, f">= {bound:,.0f}", figure.median >= bound)


def _at_most(figures: Figures, workload: str, metric: str, bound: float) -> None:
    figure = figures.get(workload, metric, "fabric")
    if figure:
        figures.judge(workload, metric, f"<= {bound:g}", figure.median <= bound)


def rss_run(figures: Figures, sizes: list[int]) -> None:
    for n in sizes:
        out = subprocess.run([sys.executable, "-m", "benchmarks.rss", str(n)], capture_output=True, text=True,
                             check=True)
        figures.add("memory", f"client peak RSS MB, {n // 1_000_000 or n}{'M' if n >= 1_000_000 else ''} items",
                    "fabric", json.loads(out.stdout)["peak_rss_mb"], "MB", False)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # The run's cache shards (W7 stores hundreds of thousands of results) go to a directory of
    # its own: the user's cache stays as it was, and every run starts from an empty cache.
    with tempfile.TemporaryDirectory(prefix="fabric-bench-") as cache_dir:
        previous = os.environ.get("FABRIC_CACHE_DIR")
        os.environ["FABRIC_CACHE_DIR"] = cache_dir
        try:
            return run(args, argv)
        finally:
            if previous is None:
                del os.environ["FABRIC_CACHE_DIR"]
            else:
                os.environ["FABRIC_CACHE_DIR"] = previous


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    repeat = args.repeat or (3 if args.quick or args.tiny else 5)
    sizes = suite.Sizes.for_mode(mode)
    only = set(args.only.split(","))
    names = ["serial", *[p for p in PEERS if p in args.peers.split(",")], "fabric"]
    names = [n for n in SYSTEMS if n in names]  # the start order of SYSTEMS
    figures, skipped = Figures(), {}
    iterations = wl.calibrate(0.001)
    started = time.monotonic()
    resident = [n for n in names if not SYSTEMS[n].daemons]
    visiting = [n for n in names if SYSTEMS[n].daemons and not _skip(n, skipped)]
    if "startup" in only:
        for _ in range(repeat):
            suite.startup({n: SYSTEMS[n] for n in resident if not _skip(n, skipped)}, args.workers, figures)
    systems = start_systems(resident, args.workers, skipped)
    _freeze_heap()
    try:
        for _ in range(repeat):
            run_workloads(systems, systems["serial"], only, sizes, figures, iterations)
            for name in visiting:  # started for its turn only; each start is a start-up figure
                visitor = suite.start_timed(SYSTEMS[name](args.workers), figures)
                _freeze_heap()
                try:
                    run_workloads({name: visitor}, systems["serial"], only, sizes, figures, iterations)
                finally:
                    visitor.stop()
    finally:
        for system in systems.values():
            system.stop()
    for _ in range(FABRIC_ONLY_REPEATS[mode]):  # fabric against itself: fewer rounds are enough
        if "W7" in only:
            suite.w7_cache(args.workers, sizes, figures, iterations)
        if "W8" in only:
            suite.w8_scaling(args.workers, sizes, figures, iterations)
        if "faults" in only:
            suite.faults(args.workers, sizes, figures, iterations)
        if "keyed" in only:
            suite.keyed(args.workers, sizes, figures)
        if "placement" in only:
            suite.placement(args.workers, sizes, figures, iterations)
        if "cluster" in only:
            cluster.two_nodes_vs_one(sizes.w1, iterations, sizes.w3, figures)
            cluster.failure_detection(figures, iterations)
    if "W11" in only:
        by_key.w11(args.workers, mode, repeat, "dask" in names and not _skip("dask", skipped), figures)
    if "rss" in only:
        rss_run(figures, [1_000_000, 3_000_000, 10_000_000] if mode == "full" else [100_000, 300_000])
    notes = judge(figures, args.workers)
    notes.append(f"{mode} run, {repeat} repetitions, {args.workers} workers, {time.monotonic() - started:.0f} s")
    notes += [f"{name} skipped: {reason}" for name, reason in skipped.items()]
    facts = report.machine()
    ran = [n for n in names if n not in skipped]
    header, table = report.rows(figures, ran)
    print(report.text_table(header, table))
    print("\n".join(notes))
    report.write_json(args.json, figures, facts, skipped)
    if args.plot:
        plot.write(args.plot, figures, ran, args.workers)
    if args.markdown:
        command = "python -m benchmarks " + shlex.join(argv if argv is not None else sys.argv[1:])
        with open(args.markdown, "w") as out:
            out.write(report.markdown(header, table, facts, command, notes))
    return 0
