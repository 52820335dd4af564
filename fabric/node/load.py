"""Readings of the node's machine: CPU and memory (psutil) and the task rate.

Runs in the node process, sampled once per heartbeat by the node loop, which
hands the readings to :class:`~fabric.node.state.NodeState`.
"""

from __future__ import annotations

import time

import psutil


class LoadMonitor:
    """Whole-machine CPU and memory, sampled once per heartbeat (psutil)."""

    def __init__(self) -> None:
        psutil.cpu_percent(None)  # the first call only starts the measurement window
        self.cpu_percent = 0.0
        self.memory_percent = 0.0
        self._rate_at = time.monotonic()
        self._rate_done = 0
        self.tasks_per_s = 0.0

    def sample(self, done: int, now: float) -> None:
        self.cpu_percent = psutil.cpu_percent(None)
        self.memory_percent = psutil.virtual_memory().percent
        elapsed = now - self._rate_at
        if elapsed > 0:
            self.tasks_per_s = (done - self._rate_done) / elapsed
        self._rate_at, self._rate_done = now, done
