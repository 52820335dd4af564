"""Worker health: which workers to kill, and how to describe a worker's exit.

Pure, in the node process.  The node loop samples each worker with psutil
(:mod:`fabric.node.load`) and hands the readings, with the time, to
:class:`WorkerHealth` through :class:`~fabric.node.state.NodeState`::

    psutil (load.py) ─► WorkerReading per worker ─► WorkerHealth.check(now) ─► Kill(worker, reason)
    pidfd exit ─► exit status ─► WorkerHealth.exit_reason ─► WORKER_LOST(reason) to the worker's clients

A kill's reason (memory limit, stopped too long) is kept until the worker's
exit is seen, so the client's error says why the worker died, not only that
SIGKILL ended it.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerReading:
    """One worker process as psutil saw it."""

    stopped: bool  # SIGSTOP'd (or traced): it runs nothing and answers nothing
    rss: int = 0  # resident bytes; 0 when no memory limit asks for it


@dataclass(frozen=True)
class Kill:
    """Kill this worker (SIGKILL); its exit then follows the usual path."""

    worker_id: bytes
    reason: str


class WorkerHealth:
    """Kills workers over their memory limit, or stopped (SIGSTOP) for longer
    than ``stopped_limit_s``: neither would ever give their batches back."""

    def __init__(self, memory_limit_mb: int, stopped_limit_s: float) -> None:
        self.memory_limit_mb = memory_limit_mb
        self.stopped_limit_s = stopped_limit_s
        self.stopped_since: dict[bytes, float] = {}
        self.kill_reasons: dict[bytes, str] = {}  # killed, exit not seen yet

    def check(self, readings: Mapping[bytes, WorkerReading], now: float) -> list[Kill]:
        """The workers to kill now; each is named once."""
        limit_bytes = self.memory_limit_mb << 20
        kills = []
        for worker_id, reading in readings.items():
            if worker_id in self.kill_reasons:
                continue
            if limit_bytes and reading.rss > limit_bytes:
                reason = f"exceeded its memory limit of {self.memory_limit_mb} MB (RSS {reading.rss >> 20} MB)"
            elif not reading.stopped:
                self.stopped_since.pop(worker_id, None)
                continue
            elif now - self.stopped_since.setdefault(worker_id, now) > self.stopped_limit_s:
                reason = f"was stopped (hung) for more than {self.stopped_limit_s:.1f} s"
            else:
                continue
            self.killing(worker_id, reason)
            kills.append(Kill(worker_id, reason))
        return kills

    def killing(self, worker_id: bytes, reason: str) -> bool:
        """Note that the worker is killed for ``reason`` (False: it is already)."""
        if worker_id in self.kill_reasons:
            return False
        self.kill_reasons[worker_id] = reason
        return True

    def exit_reason(self, worker_id: bytes, exitcode: int) -> str:
        """Why the worker exited (the kill's reason, if it was killed here); forgets it."""
        self.stopped_since.pop(worker_id, None)
        return self.kill_reasons.pop(worker_id, "") or describe_exit(exitcode)


def describe_exit(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"
