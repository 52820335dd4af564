"""Nodes as separate processes on loopback: 2 nodes × 1 worker against 1 node × 2
workers, and the time from SIGKILL of a node to its batches running elsewhere."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

import fabric

from . import workloads as wl
from .measure import Figures, timed

HEARTBEAT_S, LIVENESS_S = 1.0, 3.0  # the defaults: failure detection is measured at default settings


def _address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


@contextmanager
def nodes(workers_each: list[int]) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    addresses = [_address() for _ in workers_each]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "fabric.cli", "start", "--bind", address, "--workers", str(n),
             "--join", addresses[0]],
            env=env, stderr=subprocess.DEVNULL,
        )
        for address, n in zip(addresses, workers_each)
    ]
    try:
        yield addresses[0], procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()




def two_nodes_vs_one(sizes_w1: int, iterations: int, n_tasks: int, figures: Figures) -> None:
    for label, layout in (("1 node × 2 workers", [2]), ("2 nodes × 1 worker", [1, 1])):
        with nodes(layout) as (address, _), fabric.connect(address) as fx:
            fx.wait_for_workers(2, timeout=30)
            rate = sizes_w1 / timed(lambda: list(fx.map(wl.identity, range(sizes_w1))))
            figures.add("cluster", f"empty items/s, {label}", "fabric", rate, "items/s")
            rate = n_tasks / timed(lambda: list(fx.map(wl.spin, [iterations] * n_tasks)))
            figures.add("cluster", f"1 ms tasks/s, {label}", "fabric", rate, "tasks/s")


def failure_detection(figures: Figures, iterations: int) -> None:
    """SIGKILL one of two nodes while it holds batches; time until its work runs elsewhere."""
    with nodes([1, 1]) as (address, procs), fabric.connect(address) as fx:
        fx.wait_for_workers(2, timeout=30)
        victim = procs[1]
        results = fx.map(wl.spin, [iterations] * 1_000_000)
        next(results)
        victim_name = next(n.name for n in fx.nodes() if n.control != address)
        workers = _children(victim.pid)  # before the kill: orphans are adopted by init
        os.kill(victim.pid, signal.SIGKILL)
        for child in workers:
            os.kill(child, signal.SIGKILL)
        killed = time.monotonic()
        while any(n.name == victim_name for n in fx.nodes()):
            next(results)  # the map goes on on the survivor; the dead node's batches re-queue at detection
        figures.add("cluster", "failure detection s", "fabric", time.monotonic() - killed, "s", False)
        del results


def _children(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children()]
    except psutil.Error:
        return []
