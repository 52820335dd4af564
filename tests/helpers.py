"""Shared test helpers: polling with a deadline, the processes of a fabric, gates
and fault injection.

The task functions here are imported by reference on the workers (the embedded
node hands the client's ``sys.path`` to them), so keep this module's imports
light.  Models: dask ``distributed/chaos.py`` for the ways to crash a worker,
``utils_test.wait_for`` style polling instead of sleeps.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import fcntl
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil

T = TypeVar("T")

POLL_INTERVAL_S = 0.005


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str | None = None) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Raises AssertionError naming ``what`` (or the predicate) after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate!r}")
        time.sleep(POLL_INTERVAL_S)  # the poll interval of this deadline-bounded wait


def wait_resolved(futures: list[Any], stall_s: float) -> None:
    """Wait until every future is done; fail as soon as none has finished for
    ``stall_s`` (lost futures hang forever, so a plain timeout would be slow)."""
    pending = set(futures)
    while pending:
        done, pending = concurrent.futures.wait(pending, stall_s, concurrent.futures.FIRST_COMPLETED)
        if not done:
            raise AssertionError(f"{len(pending)} of {len(futures)} futures unresolved, no progress for {stall_s} s")


# -- processes -------------------------------------------------------------------


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting to be reaped counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def live_children(process: psutil.Process) -> list[psutil.Process]:
    """Direct children that have not exited."""
    return [p for p in process.children() if not gone(p.pid)]


def store_figures(fx: Any) -> dict[str, int]:
    """The object store figures of a one-node fabric's node."""
    return next(iter(fx.statistics().store.values()))


def node_pid(fx: Any) -> int:
    """Pid of the embedded node of a fabric started by ``fabric.connect()``."""
    return fx._embedded.process.pid


def node_process(fx: Any) -> psutil.Process:
    return psutil.Process(node_pid(fx))


def fabric_pids(fx: Any) -> set[int]:
    """The embedded node and every process under it (empty once the node has exited)."""
    try:
        node = node_process(fx)
        return {node.pid, *(p.pid for p in node.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


def worker_pids(fx: Any) -> set[int]:
    """Pids of the live worker processes of an embedded fabric."""
    return {p.pid for p in live_children(node_process(fx))}


def wait_workers(fx: Any, count: int, timeout_s: float = 10.0) -> set[int]:
    """Wait until the node has ``count`` live workers and the client holds
    credits from as many; return their pids."""
    wait_for(lambda: len(worker_pids(fx)) == count and fx.workers() == count, timeout_s, f"{count} workers")
    return worker_pids(fx)


def all_gone(pids: set[int]) -> bool:
    return all(gone(pid) for pid in pids)


# -- gates: a task blocks until the test opens its gate ----------------------------


class Gate:
    """A file the test holds an exclusive lock on until ``open()``; tasks block on
    a shared lock of it, so they wait on the event itself, without polling.  The
    kernel drops the lock if the test process dies: no worker stays blocked after
    it.  Only the path travels."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def open(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


def gated(gate_path: str, value: T, started_dir: str | None = None) -> T:
    """Return ``value`` once the gate at ``gate_path`` is open (a task that blocks).

    With ``started_dir``, first create a file named after the worker's pid
    there, so a test can wait until workers are inside the task.
    """
    if started_dir is not None:
        Path(started_dir, str(os.getpid())).touch()
    fd = os.open(gate_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # returns once the test has opened the gate (or died)
    finally:
        os.close(fd)
    return value


# -- tasks -------------------------------------------------------------------------


def square(x: int) -> int:
    return x * x


def double(x: int) -> int:
    return 2 * x


def cached_double(fx: Any, n: int) -> tuple[bool, int, int]:
    """``fx.map(double, range(n), cache=True)``: (whether its results are right, hits, misses)."""
    before = fx.cache.stats()
    results = list(fx.map(double, range(n), cache=True))
    after = fx.cache.stats()
    return results == [2 * x for x in range(n)], after.hits - before.hits, after.misses - before.misses


def spin_square(x: int, seconds: float = 1e-4) -> int:
    """``x * x`` after ``seconds`` of busy work."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return x * x


def pid_after(_: object, seconds: float = 0.002) -> int:
    """The worker's pid, after a little work so that a map spreads over workers."""
    spin_square(0, seconds)
    return os.getpid()


# -- fault injection (dask's chaos.py: exit, kill, segfault) ------------------------


def die_by_exit() -> None:
    os._exit(3)


def die_by_sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def die_by_segfault() -> None:
    ctypes.string_at(0)


CRASHES: dict[str, Callable[[], None]] = {
    "exit": die_by_exit,
    "sigkill": die_by_sigkill,
    "segfault": die_by_segfault,
}


def crash_once(x: int, at: int, how: str, marker: str) -> int:
    """``x * x``, except that the first worker to reach item ``at`` dies by ``how``.

    ``marker`` is created atomically before dying, so a retry of the same item
    returns normally: the worker crashes exactly once.
    """
    if x == at:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return spin_square(x)
        os.close(fd)
        CRASHES[how]()
    return spin_square(x)


def crash_always(x: int, at: int, how: str) -> int:
    """``x * x``, except that item ``at`` kills its worker on every attempt."""
    if x == at:
        CRASHES[how]()
    return spin_square(x, 0)


# -- daemon nodes --------------------------------------------------------------------


def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def node_status(address: str) -> list[Any]:
    """The node's view of the live cluster (``fabric-node status``), [] while it does not answer."""
    from fabric.cli import ask_status  # here: the workers import this module for its tasks

    try:
        return ask_status(address, timeout_s=1.0)
    except TimeoutError:
        return []


def cluster_file(path: Path, names: list[str], *tables: str) -> Path:
    """Write a cluster.toml naming one node per name on a free loopback port (1 worker each,
    fast heartbeats), with extra ``tables`` lines; return its path."""
    lines = ["[cluster]", "heartbeat_interval_s = 0.2", "liveness_s = 1.0", *tables]
    for name in names:
        lines += ["[[node]]", f'name = "{name}"', f'address = "{free_address()}"', "workers = 1"]
    path.write_text("\n".join(lines) + "\n")
    return path


def worker_processes(node_pids: set[int]) -> list[psutil.Process]:
    """Live worker processes of these nodes."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.ppid() in node_pids and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.Error:
            continue
    return found


def scribble(path: Path, offset: int, length: int) -> None:
    """Random bytes over part of a file in place, as ``dd conv=notrunc`` would (disk corruption)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(os.urandom(length))
