"""Fixtures for tests that run real fabrics: a shared one, fresh ones, and a
check that fails loudly when a test leaves child processes behind.

Models: pyzmq ``tests/conftest.py`` (teardown fails when sockets remain open)
and dask ``distributed/pytest_resourceleaks.py`` (processes leaked by a test).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import zmq
from helpers import Gate, all_gone, fabric_pids, gone, wait_for, wait_workers, worker_processes

import fabric

# Embedded nodes keep their result-cache shard under FABRIC_CACHE_DIR: never the user's own cache.
os.environ["FABRIC_CACHE_DIR"] = tempfile.mkdtemp(prefix="fabric-test-cache-")

WORKERS = 2
LEAK_GRACE_S = 5.0  # the node's own stop timeout: a child still alive after it has leaked

_shared: list[fabric.Fabric] = []  # module-scoped fabrics, whose processes outlive one test


def _shutdown_and_check(fx: fabric.Fabric, **shutdown_kwargs: bool) -> None:
    """Shut ``fx`` down; fail if its node or any of its workers is still alive."""
    pids = fabric_pids(fx)
    fx.shutdown(**shutdown_kwargs)
    wait_for(lambda: all_gone(pids), LEAK_GRACE_S, f"the processes of {fx!r} to exit")


@pytest.fixture(scope="module")
def fx() -> Iterator[fabric.Fabric]:
    """One fabric with 2 workers shared by a module's behaviour tests.

    Tests using it must leave it as they found it: no task left running.
    """
    shared = fabric.connect(workers=WORKERS)
    _shared.append(shared)
    wait_workers(shared, WORKERS)
    try:
        yield shared
    finally:
        _shared.remove(shared)
        _shutdown_and_check(shared)


def _new_children(before: set[int]) -> list[psutil.Process]:
    """Live descendants of this process started since ``before``, except those
    of the shared fabrics."""
    shared = {pid for fx in _shared for pid in fabric_pids(fx)}
    children = psutil.Process().children(recursive=True)
    return [p for p in children if p.pid not in before and p.pid not in shared and not gone(p.pid)]


def _describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {' '.join(process.cmdline())}"
    except psutil.Error:
        return str(process.pid)


@pytest.fixture
def no_leaked_processes() -> Iterator[None]:
    """Fail the test if it leaves a child process behind (killing the leftovers)."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    try:
        wait_for(lambda: not _new_children(before), LEAK_GRACE_S, "the test's child processes to exit")
    except AssertionError:
        leaked = _new_children(before)
    else:
        return
    for process in leaked:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    pytest.fail("leaked child processes:\n" + "\n".join(map(_describe, leaked)), pytrace=False)


@pytest.fixture
def make_fabric(no_leaked_processes: None) -> Iterator[Callable[..., fabric.Fabric]]:
    """Factory of fresh fabrics (2 workers unless told), all workers up, shut down after the test."""
    made: list[fabric.Fabric] = []

    def make(**kwargs: int) -> fabric.Fabric:
        kwargs.setdefault("workers", WORKERS)
        new = fabric.connect(**kwargs)
        made.append(new)
        # Every worker up first: a worker still starting when the fabric shuts
        # down misses its SHUTDOWN and costs the node's 2 s grace.
        wait_workers(new, kwargs["workers"])
        return new

    yield make
    for each in made:
        _shutdown_and_check(each, wait=False, cancel_futures=True)


@pytest.fixture
def fresh_fx(make_fabric: Callable[..., fabric.Fabric]) -> fabric.Fabric:
    """A fabric of its own for a test that breaks, blocks or shuts it down."""
    return make_fabric()


@pytest.fixture
def gate(tmp_path) -> Iterator[Gate]:
    """A gate for blocking tasks; opened at teardown so no task stays blocked."""
    g = Gate(tmp_path / "gate")
    yield g
    g.open()


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context]:
    """A context for raw sockets; teardown fails if a test leaves one open."""
    context = zmq.Context()
    yield context
    open_sockets = [s for s in context._sockets if not s.closed]
    for sock in open_sockets:
        sock.close(linger=0)
    context.term()
    assert not open_sockets, f"{len(open_sockets)} sockets left open"


# -- daemon nodes ------------------------------------------------------------------


@pytest.fixture
def start_node(tmp_path):
    """Start ``fabric-node`` daemons (killed at teardown); the test's functions import on their workers."""
    started: list[subprocess.Popen[bytes]] = []

    def start(address: str | None = None, *, config: Path | None = None, name: str | None = None,
              workers: int = 1, join: str | None = None, max_load: float | None = None,
              key_file: str | None = None, log: Path | None = None,
              heartbeat_interval_s: float = 0.2, liveness_s: float = 1.0, flags: tuple[str, ...] = (),
              path: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        """A node at ``address``, or the ``[[node]]`` called ``name`` in the cluster file ``config``;
        with ``log``, its messages go to that file; ``flags`` are more of ``fabric-node start``'s
        (``--resources gpu=2``), ``path`` folders its PYTHONPATH has before the test's."""
        cmd = [sys.executable, "-m", "fabric.cli", "start", "--workers", str(workers),
               "--heartbeat-interval", str(heartbeat_interval_s), "--liveness", str(liveness_s),
               "--cache-dir", str(tmp_path / "cache")]
        cmd += ["--bind", address] if address else []
        cmd += ["--config", str(config), "--name", str(name)] if config else []
        cmd += ["--join", join] if join else []
        cmd += ["--max-load", str(max_load)] if max_load is not None else []
        cmd += ["--key-file", key_file] if key_file else []
        cmd += list(flags)
        with open(log, "w") if log else contextlib.nullcontext() as stderr:
            node = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": os.pathsep.join([*path, *sys.path])},
                                    stderr=stderr)
        started.append(node)
        return node

    yield start
    workers = worker_processes({node.pid for node in started})
    for process in [*started, *workers]:
        process.kill()
    for node in started:
        node.wait()


# -- disk faults -------------------------------------------------------------------


class DiskFaults:
    """Small file systems and unwritable files for store tests; ``undo`` reverts all of it."""

    def __init__(self) -> None:
        self._mounts: list[Path] = []
        self._immutable: list[Path] = []

    def tmpfs(self, where: Path, size: str = "2m") -> Path:
        """A fresh tmpfs of ``size`` at ``where`` (skips the test where mounting is not allowed)."""
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
        self._mounts.append(where)
        return where

    def read_only(self, where: Path) -> None:
        """Remount a tmpfs made by :meth:`tmpfs` read-only (EROFS on every write)."""
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)

    def immutable(self, *paths: Path) -> None:
        """``chattr +i``: unwritable even for root (skips the test without chattr)."""
        for path in paths:
            try:
                done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
            except FileNotFoundError:
                pytest.skip("chattr is not installed (e2fsprogs)")
            if done.returncode:
                pytest.skip(f"chattr +i {path} failed: {done.stderr.strip()}")
            self._immutable.append(path)

    def undo(self) -> None:
        for path in self._immutable:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        for where in reversed(self._mounts):
            subprocess.run(["umount", "-l", str(where)], capture_output=True)
        self._immutable.clear()
        self._mounts.clear()


@pytest.fixture
def disk_faults() -> Iterator[DiskFaults]:
    faults = DiskFaults()
    try:
        yield faults
    finally:
        faults.undo()
